"""What every coder shares: the edit contract, path checks and the no-change answer."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import ClassVar

from speedrunner.llm.offline import NO_CHANGE
from speedrunner.workspace.store import matches


class EditError(ValueError):
    """An edit that cannot be applied. The message is written for the model, which gets a retry."""


@dataclass
class EditResult:
    edits: dict[str, str | None]  # path -> new text (None deletes)
    no_change: bool = False


_NO_CHANGE = re.compile(rf"^\s*{NO_CHANGE}\s*\.?\s*$", re.IGNORECASE | re.MULTILINE)


def says_no_change(text: str) -> bool:
    return bool(_NO_CHANGE.search(text))


def check_path(path: str, protected: list[str]) -> str:
    """A relative path inside the workspace that is not protected; else an EditError for the model."""
    p = PurePosixPath(path.strip())
    if not path.strip() or p.is_absolute() or ".." in p.parts:
        raise EditError(f"'{path}' is not a path inside the workspace; use a relative path such as train_gpt.py.")
    rel = p.as_posix()
    if matches(rel, protected):
        raise EditError(f"'{rel}' is protected (data or evaluation code) and cannot be edited; "
                        "change the other files instead.")
    return rel


class Coder:
    """Turns a model's reply into file edits. Subclasses define the format."""

    name: ClassVar[str] = "coder"

    def instructions(self) -> str:
        raise NotImplementedError

    def apply(self, text: str, files: dict[str, str], protected: list[str]) -> EditResult:
        """Parse ``text`` and apply it to ``files`` in memory; raise EditError with a message for the model."""
        raise NotImplementedError

    @classmethod
    def render(cls, old: dict[str, str], new: dict[str, str]) -> str:
        """A reply in this format that turns ``old`` into ``new`` (used by the oracle and in tests)."""
        raise NotImplementedError
