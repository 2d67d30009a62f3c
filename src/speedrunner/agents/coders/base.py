"""What every coder shares: the edit contract, path checks and the no-change answer."""

from __future__ import annotations

import re
from collections.abc import Iterable
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


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
NAME_MAX = 255  # bytes in one file or folder name (Linux, macOS)


def check_path(path: str, protected: list[str], existing: Iterable[str] = ()) -> str:
    """A relative path inside the workspace that is not protected and that a file can be written to; else
    an EditError for the model. ``existing``: the files the edit starts from (a path cannot run through one
    of them, nor be a folder of one)."""
    p = PurePosixPath(path.strip())
    if not path.strip() or p.is_absolute() or ".." in p.parts:
        raise EditError(f"'{path}' is not a path inside the workspace; use a relative path such as train_gpt.py.")
    rel = p.as_posix()
    if _CONTROL.search(rel):
        raise EditError(f"{rel!r} contains a control character; use a plain relative path such as train_gpt.py.")
    if any(len(part.encode("utf-8", "surrogatepass")) > NAME_MAX for part in p.parts):
        raise EditError(f"'{rel[:60]}...': a name in this path is too long (at most {NAME_MAX} bytes).")
    if matches(rel, protected) or any(matches(a.as_posix(), protected) for a in p.parents if a.parts):
        raise EditError(f"'{rel}' is protected (data or evaluation code) and cannot be edited; "
                        "change the other files instead.")
    for other in existing:
        if rel.startswith(other + "/"):
            raise EditError(f"'{rel}' puts a file inside '{other}', which is a file, not a folder.")
        if other.startswith(rel + "/"):
            raise EditError(f"'{rel}' is a folder (it holds {other}), not a file.")
    return rel


def check_text(path: str, text: str | None) -> None:
    """New file content must be writable as UTF-8 (a reply decoded from JSON can hold lone surrogates)."""
    if text is None:
        return
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise EditError(f"The new content of {path} holds a character that cannot be written as UTF-8 "
                        f"({text[e.start]!r} at position {e.start}); send the edit again without it.") from None


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
