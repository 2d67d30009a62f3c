"""The ideator contract: given the situation of a node, say what to try."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from speedrunner.agents.agent import Agent
from speedrunner.core.types import Operator
from speedrunner.tasks.spec import Task
from speedrunner.workspace.store import Node


@dataclass
class Idea:
    summary: str
    hypothesis: str = ""
    text: str = ""  # markdown for the coder's prompt


@dataclass
class IdeaContext:
    task: Task
    operator: Operator
    parent: Node
    files: dict[str, str]
    history: str
    hints_text: str = ""
    extra: dict = field(default_factory=dict)


class Ideator:
    name: ClassVar[str] = "ideator"
    uses_model: ClassVar[bool] = False

    last_error: str | None = None

    def propose(self, ctx: IdeaContext, agent: Agent | None) -> Idea | None:
        """An idea, or None when it could not produce one (the reason goes to ``self.last_error``).

        ``agent`` is a fresh agent for this node (model, system prompt, journaling); ideators that
        need no model ignore it."""
        raise NotImplementedError
