"""The ``llm`` ideator (innovation mode): the model proposes what to try as ``{summary, hypothesis}``."""

from __future__ import annotations

import json
import re
from typing import Any

from speedrunner.agents.agent import Agent, Invalid
from speedrunner.agents.ideators.base import Idea, IdeaContext, Ideator
from speedrunner.agents.listing import render_files
from speedrunner.agents.prompts import job_text
from speedrunner.llm.offline import IDEA_REQUEST_MARKER

PROMPT = """\
# Your job
{job}

Do not write code yet: propose the single most promising idea, different from the attempts listed below
unless you are fixing one of them.

{hints}# Recent attempts
{history}

# Current code
{files}

# How to reply
{marker}, both strings:
{{"summary": "one line naming the change", "hypothesis": "why it should improve the metric, and by how much"}}
"""

_OBJECT = re.compile(r"\{.*\}", re.DOTALL)


def parse_idea(text: str) -> Idea:
    m = _OBJECT.search(text)
    if not m:
        raise Invalid('No JSON object found. Reply with one JSON object: {"summary": "...", "hypothesis": "..."}')
    try:
        data: Any = json.loads(m.group(0))
    except json.JSONDecodeError as e:
        raise Invalid(f"The JSON object does not parse ({e.msg} at character {e.pos}). Reply with valid JSON: "
                      '{"summary": "...", "hypothesis": "..."}') from None
    if not isinstance(data, dict):
        raise Invalid('Expected a JSON object {"summary": "...", "hypothesis": "..."}.')
    missing = [k for k in ("summary", "hypothesis") if not isinstance(data.get(k), str) or not data[k].strip()]
    if missing:
        raise Invalid(f"The keys {missing} must be non-empty strings. Reply with "
                      '{"summary": "...", "hypothesis": "..."}.')
    return Idea(summary=data["summary"].strip(), hypothesis=data["hypothesis"].strip())


class LLMIdeator(Ideator):
    name = "llm"
    uses_model = True

    def __init__(self, max_retries: int = 2):
        self.max_retries = max_retries
        self.last_error: str | None = None

    def propose(self, ctx: IdeaContext, agent: Agent | None) -> Idea | None:
        if agent is None:
            raise ValueError("the llm ideator needs a model")
        hints = f"# Notes\n{ctx.hints_text}\n\n" if ctx.hints_text else ""
        prompt = PROMPT.format(job=job_text(ctx.task, ctx.operator, ctx.parent), hints=hints,
                               history=ctx.history or "(none yet)", files=render_files(ctx.files),
                               marker=IDEA_REQUEST_MARKER)
        res = agent.act(prompt, parse_idea, max_retries=self.max_retries)
        if not res.ok:
            self.last_error = res.error
            return None
        idea = res.value
        assert idea is not None
        idea.text = f"Implement this idea.\n\n**{idea.summary}**\n\n{idea.hypothesis}"
        return idea
