"""SEARCH/REPLACE blocks over any file of the node: exact match first, then a whitespace-tolerant one."""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass

from speedrunner.agents.coders import editblock_prompts as P
from speedrunner.agents.coders.base import Coder, EditError, EditResult, check_path, says_no_change

_SEARCH = re.compile(r"^\s*<{5,9} ?SEARCH\s*$")
_DIVIDER = re.compile(r"^\s*={5,9}\s*$")
_REPLACE = re.compile(r"^\s*>{5,9} ?REPLACE\s*$")
_FENCE = re.compile(r"^\s*`{3,}")


@dataclass
class Block:
    path: str | None
    search: str
    replace: str


def _path_from(line: str) -> str | None:
    s = line.strip().strip("`*").strip()
    for prefix in ("### File:", "File:", "file:", "#"):
        if s.startswith(prefix):
            s = s[len(prefix):].strip()
    s = s.rstrip(":").strip()
    if not s or " " in s or _SEARCH.match(s) or _FENCE.match(s):
        return None
    return s


def parse_blocks(text: str) -> list[Block]:
    lines = text.splitlines()
    blocks: list[Block] = []
    i = 0
    last_path: str | None = None
    while i < len(lines):
        if not _SEARCH.match(lines[i]):
            i += 1
            continue
        index = len(blocks) + 1
        path = None
        j = i - 1
        while j >= 0 and j >= i - 3:  # the path is on one of the lines just above (a fence may sit between)
            if lines[j].strip() and not _FENCE.match(lines[j]):
                path = _path_from(lines[j])
                break
            j -= 1
        path = path or last_path
        search, replace, k, part = [], [], i + 1, "search"
        while k < len(lines):
            if part == "search" and _DIVIDER.match(lines[k]):
                part = "replace"
            elif part == "replace" and _REPLACE.match(lines[k]):
                break
            else:
                (search if part == "search" else replace).append(lines[k])
            k += 1
        else:
            raise EditError(P.UNCLOSED.format(index=index))
        blocks.append(Block(path, "\n".join(search), "\n".join(replace)))
        last_path = path
        i = k + 1
    return blocks


def _lines(s: str) -> list[str]:
    return s.split("\n") if s else []


def _indent(s: str) -> str:
    return s[: len(s) - len(s.lstrip())]


def _find(content_lines: list[str], search_lines: list[str], norm) -> list[int]:
    want = [norm(x) for x in search_lines]
    n = len(want)
    have = [norm(x) for x in content_lines]
    return [i for i in range(len(have) - n + 1) if have[i:i + n] == want]


def replace_once(content: str, search: str, replace: str) -> str | int:
    """New content, or the number of matches (0 or >1) when there is no unique match."""
    count = content.count(search)
    if count == 1:
        return content.replace(search, replace, 1)
    if count > 1:
        return count
    c_lines, s_lines = content.split("\n"), _lines(search)
    while s_lines and not s_lines[-1].strip():
        s_lines = s_lines[:-1]
    while s_lines and not s_lines[0].strip():
        s_lines = s_lines[1:]
    if not s_lines:
        return 0
    r_lines = _lines(replace)
    # 1) trailing whitespace ignored
    hits = _find(c_lines, s_lines, str.rstrip)
    if len(hits) == 1:
        i = hits[0]
        return "\n".join(c_lines[:i] + r_lines + c_lines[i + len(s_lines):])
    if len(hits) > 1:
        return len(hits)
    # 2) indentation ignored: re-indent the replacement by the difference found on the first line
    hits = _find(c_lines, s_lines, str.strip)
    if len(hits) != 1:
        return len(hits)
    i = hits[0]
    first = next(k for k, s in enumerate(s_lines) if s.strip())
    have, want = _indent(c_lines[i + first]), _indent(s_lines[first])
    fixed = []
    for r in r_lines:
        if not r.strip():
            fixed.append(r)
        elif len(have) >= len(want):
            fixed.append(have[len(want):] + r if r.startswith(want) else have + r.lstrip())
        else:
            extra = len(want) - len(have)
            fixed.append(r[extra:] if r[:extra].strip() == "" else r)
    return "\n".join(c_lines[:i] + fixed + c_lines[i + len(s_lines):])


def closest_lines(content: str, search: str, context: int = 0) -> str:
    c_lines, s_lines = content.split("\n"), _lines(search)
    n = max(1, len(s_lines))
    best, best_i = 0.0, 0
    target = "\n".join(s_lines)
    for i in range(0, max(1, len(c_lines) - n + 1)):
        r = difflib.SequenceMatcher(None, "\n".join(c_lines[i:i + n]), target, autojunk=False).quick_ratio()
        if r > best:
            best, best_i = r, i
    if best < 0.5:
        return ""
    return "\n".join(c_lines[max(0, best_i - context): best_i + n + context])


class EditBlockCoder(Coder):
    name = "editblock"

    def instructions(self) -> str:
        return P.INSTRUCTIONS

    def apply(self, text: str, files: dict[str, str], protected: list[str]) -> EditResult:
        blocks = parse_blocks(text)
        if not blocks:
            if says_no_change(text):
                return EditResult(edits={}, no_change=True)
            raise EditError(P.NOTHING_FOUND)
        current = dict(files)
        touched: set[str] = set()
        for index, b in enumerate(blocks, 1):
            if b.path is None:
                raise EditError(P.NO_PATH.format(index=index))
            path = check_path(b.path, protected)
            if not b.search.strip():
                if path in current and current[path].strip():
                    raise EditError(P.EXISTS.format(index=index, path=path))
                current[path] = b.replace + ("\n" if b.replace and not b.replace.endswith("\n") else "")
                touched.add(path)
                continue
            if path not in current:
                raise EditError(P.NO_FILE.format(index=index, path=path, files=", ".join(sorted(current)) or "none"))
            result = replace_once(current[path], b.search, b.replace)
            if isinstance(result, int):
                if result == 0:
                    near = closest_lines(current[path], b.search)
                    closest = P.CLOSEST.format(path=path, lines=near) if near else ""
                    raise EditError(P.NO_MATCH.format(index=index, path=path, closest=closest))
                raise EditError(P.AMBIGUOUS.format(index=index, path=path, count=result))
            current[path] = result
            touched.add(path)
        edits = {p: current[p] for p in sorted(touched) if files.get(p) != current[p]}
        return EditResult(edits=edits, no_change=not edits)

    @classmethod
    def render(cls, old: dict[str, str], new: dict[str, str]) -> str:
        out = []
        for path in sorted(new):
            if old.get(path) == new[path]:
                continue
            if path not in old:
                out.append(f"{path}\n<<<<<<< SEARCH\n=======\n{new[path].rstrip(chr(10))}\n>>>>>>> REPLACE\n")
                continue
            out.extend(_blocks_for(path, old[path], new[path]))
        return "\n".join(out) if out else "NO CHANGE"


def _blocks_for(path: str, old: str, new: str, context: int = 2) -> list[str]:
    """Minimal blocks whose SEARCH parts are unique in ``old`` (context grows until they are)."""
    a, b = old.split("\n"), new.split("\n")
    ops = difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes()
    changes = [(i1, i2, j1, j2) for tag, i1, i2, j1, j2 in ops if tag != "equal"]
    blocks = []
    for i1, i2, j1, j2 in changes:
        ctx = context
        while True:
            s1, s2 = max(0, i1 - ctx), min(len(a), i2 + ctx)
            search = "\n".join(a[s1:s2])
            if search and old.count(search) == 1 or (s1 == 0 and s2 == len(a)):
                break
            ctx += 2
        d1, d2 = j1 - (i1 - s1), j2 + (s2 - i2)
        replace = "\n".join(b[d1:d2])
        blocks.append((s1, s2, search, replace))
    # blocks whose regions overlap cannot be applied one after the other: fall back to one whole-file block
    if any(later[0] < earlier[1] for earlier, later in zip(blocks, blocks[1:], strict=False)):
        return [f"{path}\n<<<<<<< SEARCH\n{old.rstrip(chr(10))}\n=======\n{new.rstrip(chr(10))}\n>>>>>>> REPLACE\n"]
    return [f"{path}\n<<<<<<< SEARCH\n{search}\n=======\n{replace}\n>>>>>>> REPLACE\n"
            for _, _, search, replace in blocks]
