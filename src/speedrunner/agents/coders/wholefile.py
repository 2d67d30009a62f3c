"""Whole-file edits: the model sends the complete new content of each file it changes."""

from __future__ import annotations

import re
from pathlib import PurePosixPath

from speedrunner.agents.coders import wholefile_prompts as P
from speedrunner.agents.coders.base import (
    Coder,
    EditError,
    EditResult,
    check_path,
    check_text,
    says_no_change,
)
from speedrunner.agents.listing import render_files

# "### File: any/path" (the documented form; any file name), or a bare path with an extension.
_HEADER = re.compile(r"^(?:#{1,4}\s*File:\s*`?(?P<named>[\w./-]+)`?|(?:#{1,4}\s*|File:\s*)?`?(?P<path>[\w./-]+\.\w+)`?):?\s*$")
_OPEN = re.compile(r"^(?P<fence>`{3,})[\w+-]*\s*$")
_ELIDED = re.compile(r"^\s*(#|//)\s*\.\.\.\s*(rest|remaining|unchanged|existing)", re.IGNORECASE | re.MULTILINE)


def parse_whole_files(text: str) -> dict[str, str]:
    lines = text.splitlines()
    out: dict[str, str] = {}
    i = 0
    while i < len(lines) - 1:
        h = _HEADER.match(lines[i].strip())
        o = _OPEN.match(lines[i + 1].strip()) if h else None
        if not (h and o):
            i += 1
            continue
        fence = o.group("fence")
        body, k = [], i + 2
        while k < len(lines) and lines[k].strip() != fence:
            body.append(lines[k])
            k += 1
        path = h.group("named") or h.group("path")
        if k == len(lines):  # no closing fence: the reply was most likely cut off (its token limit)
            raise EditError(P.UNCLOSED.format(path=path, fence=fence))
        out[path] = "\n".join(body) + "\n" if body else ""
        i = k + 1
    return out


class WholeFileCoder(Coder):
    name = "wholefile"

    def instructions(self) -> str:
        return P.INSTRUCTIONS

    def apply(self, text: str, files: dict[str, str], protected: list[str]) -> EditResult:
        found = parse_whole_files(text)
        if not found:
            if says_no_change(text):
                return EditResult(edits={}, no_change=True)
            raise EditError(P.NOTHING_FOUND)
        edits: dict[str, str | None] = {}
        listed = [PurePosixPath(raw.strip()).as_posix() for raw in found]
        for raw, content in found.items():
            path = check_path(raw, protected, existing=[*files, *listed])
            check_text(path, content)
            m = _ELIDED.search(content)
            if m and path in files and m.group(0) not in files[path]:
                raise EditError(P.ELIDED.format(path=path, marker=m.group(0).strip()))
            if files.get(path) != content:
                edits[path] = content
        return EditResult(edits=edits, no_change=not edits)

    @classmethod
    def render(cls, old: dict[str, str], new: dict[str, str]) -> str:
        changed = {p: t for p, t in sorted(new.items()) if old.get(p) != t}
        return render_files(changed) if changed else "NO CHANGE"
