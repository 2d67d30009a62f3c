"""The ``hints`` ideator: the selected hint files, formatted as markdown. No model call."""

from __future__ import annotations

from speedrunner.agents.agent import Agent
from speedrunner.agents.ideators.base import Idea, IdeaContext, Ideator


class HintsIdeator(Ideator):
    name = "hints"

    def propose(self, ctx: IdeaContext, agent: Agent | None = None) -> Idea:
        if not ctx.hints_text:
            return Idea(summary="", hypothesis="", text="")
        text = ("The following notes describe a change that is known to improve this code. Use them.\n\n"
                + ctx.hints_text)
        return Idea(summary="Implement the change described in the hints", hypothesis="", text=text)
