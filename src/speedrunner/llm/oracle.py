"""The ``oracle`` model: answers with the task's reference change, in the coder's edit format.

It reads the node's files from the prompt (the listing format of ``agents/listing.py``) and replies
with the edits that turn them into the reference files (the task's ``reference`` folder overlaid on
its template). Once a node already holds the reference, it answers NO CHANGE. It is a check of the
harness and the upper bound of a task, never an agent.
"""

from __future__ import annotations

import json
from pathlib import Path

from speedrunner.agents.coders.base import Coder
from speedrunner.agents.listing import parse_files
from speedrunner.core.errors import UserError
from speedrunner.core.types import Completion, Message
from speedrunner.llm.offline import estimate_usage, wants_idea
from speedrunner.tasks.spec import Task
from speedrunner.workspace.store import is_text, matches


def reference_files(task: Task) -> dict[str, str]:
    if task.reference_dir is None:
        raise UserError(f"model=oracle needs a task with a reference solution; {task.spec_path} has no "
                        "'reference' field (a folder whose files overlay the template)")
    out = {}
    for p in sorted(Path(task.reference_dir).rglob("*")):
        rel = p.relative_to(task.reference_dir).as_posix()
        if p.is_file() and "__pycache__" not in p.parts and matches(rel, task.editable) and is_text(p):
            out[rel] = p.read_text(encoding="utf-8")
    if not out:
        raise UserError(f"{task.reference_dir}: the reference folder holds no editable file ({task.editable})")
    return out


class OracleModel:
    def __init__(self, task: Task, coder: type[Coder], name: str = "oracle"):
        self.name = name
        self.coder = coder
        self.target = reference_files(task)

    def complete(self, messages: list[Message]) -> Completion:
        if wants_idea(messages):
            text = json.dumps({"summary": "Apply the reference change",
                               "hypothesis": "The reference solution is known to improve the metric."})
            return Completion(text=text, usage=estimate_usage(messages, text))
        current: dict[str, str] = {}
        for m in messages:
            if m["role"] == "user":
                current.update(parse_files(m["content"]))
        old = {p: current[p] for p in self.target if p in current}
        text = self.coder.render(old, self.target)
        return Completion(text=text, usage=estimate_usage(messages, text))
