"""SEARCH/REPLACE blocks over any file of the node: exact match first, then a whitespace-tolerant one."""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass

from speedrunner.agents.coders import editblock_prompts as P
from speedrunner.agents.coders.base import (
    Coder,
    EditError,
    EditResult,
    check_path,
    check_text,
    says_no_change,
)

_SEARCH = re.compile(r"^\s*<{5,9} ?SEARCH\s*$")
_DIVIDER = re.compile(r"^\s*={5,9}\s*$")
_REPLACE = re.compile(r"^\s*>{5,9} ?REPLACE\s*$")
_FENCE = re.compile(r"^\s*`{3,}")


@dataclass
class Block:
    """One SEARCH/REPLACE block, its parts kept as the literal lines between the markers."""

    path: str | None
    search: list[str]
    replace: list[str]


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
    lines = text.split("\n")
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
        search: list[str] = []
        replace: list[str] = []
        k, part = i + 1, "search"
        while k < len(lines):
            if _DIVIDER.match(lines[k]):
                if part == "replace":
                    raise EditError(P.TWO_DIVIDERS.format(index=index))
                part = "replace"
            elif _REPLACE.match(lines[k]):
                if part == "search":
                    raise EditError(P.UNCLOSED.format(index=index))
                break
            else:
                (search if part == "search" else replace).append(lines[k].rstrip("\r"))
            k += 1
        else:
            raise EditError(P.UNCLOSED.format(index=index))
        blocks.append(Block(path, search, replace))
        last_path = path
        i = k + 1
    return blocks


def _indent(s: str) -> str:
    return s[: len(s) - len(s.lstrip())]


def _hits(content: list[str], search: list[str], norm=None) -> list[int]:
    """Every line index where ``search`` matches a window of ``content`` (overlapping hits included)."""
    n = len(search)
    if n == 0 or n > len(content):
        return []
    if norm is None:
        return [i for i in range(len(content) - n + 1) if content[i:i + n] == search]
    want = [norm(x) for x in search]
    have = [norm(x) for x in content]
    return [i for i in range(len(have) - n + 1) if have[i:i + n] == want]


def _trim_blank(lines: list[str]) -> tuple[list[str], int]:
    start, end = 0, len(lines)
    while start < end and not lines[start].strip():
        start += 1
    while end > start and not lines[end - 1].strip():
        end -= 1
    return lines[start:end], start


def replace_once(content: str, search: list[str], replace: list[str]) -> str | int:
    """New content, or the number of places (0 or more than 1) when ``search`` does not match one place.

    Matching is on whole lines: exactly first, then ignoring trailing whitespace, then ignoring
    indentation (the replacement is re-indented by the difference seen on the first line)."""
    c = content.split("\n")
    hits = _hits(c, search)
    if len(hits) == 1:
        i = hits[0]
        return "\n".join(c[:i] + replace + c[i + len(search):])
    if len(hits) > 1:
        return len(hits)
    core, _ = _trim_blank(search)
    if not core:
        return 0
    hits = _hits(c, core, str.rstrip)
    if len(hits) == 1:
        i = hits[0]
        return "\n".join(c[:i] + _trim_blank(replace)[0] + c[i + len(core):])
    if len(hits) > 1:
        return len(hits)
    hits = _hits(c, core, str.strip)
    if len(hits) != 1:
        return len(hits)
    i = hits[0]
    have, want = _indent(c[i]), _indent(core[0])
    fixed = []
    for r in _trim_blank(replace)[0]:
        if not r.strip():
            fixed.append(r)
        elif len(have) >= len(want):
            fixed.append(have[len(want):] + r if r.startswith(want) else have + r.lstrip())
        else:
            extra = len(want) - len(have)
            fixed.append(r[extra:] if r[:extra].strip() == "" else r)
    return "\n".join(c[:i] + fixed + c[i + len(core):])


def closest_lines(content: str, search: list[str]) -> str:
    c_lines = content.split("\n")
    n = max(1, len(search))
    best, best_i = 0.0, 0
    target = "\n".join(search)
    for i in range(0, max(1, len(c_lines) - n + 1)):
        r = difflib.SequenceMatcher(None, "\n".join(c_lines[i:i + n]), target, autojunk=False).quick_ratio()
        if r > best:
            best, best_i = r, i
    if best < 0.5:
        return ""
    return "\n".join(c_lines[best_i: best_i + n])


def _is_marker(line: str) -> bool:
    return bool(_SEARCH.match(line) or _DIVIDER.match(line) or _REPLACE.match(line))


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
            path = check_path(b.path, protected, existing=current)
            if not any(x.strip() for x in b.search):  # an empty (or blank) SEARCH part creates a file
                if path in current and current[path].strip():
                    raise EditError(P.EXISTS.format(index=index, path=path))
                current[path] = new_file_text(b.replace)
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
        for p, text in edits.items():
            check_text(p, text)
        return EditResult(edits=edits, no_change=not edits)

    @classmethod
    def render(cls, old: dict[str, str], new: dict[str, str]) -> str:
        out = []
        for path in sorted(new):
            if old.get(path) == new[path]:
                continue
            if path not in old or not old[path].strip():  # new (or empty) file: one block that creates it
                out.append(_block_text(path, [], new[path].split("\n")[:-1] if new[path].endswith("\n")
                                       else new[path].split("\n")))
                continue
            out.extend(_blocks_for(path, old[path], new[path]))
        return "\n".join(out) if out else "NO CHANGE"


def new_file_text(lines: list[str]) -> str:
    """A created file's text: its lines, ending with a newline (as every text file should)."""
    return "\n".join(lines) + "\n" if lines else ""


def _block_text(path: str, search: list[str], replace: list[str]) -> str:
    body = "\n".join(["<<<<<<< SEARCH", *search, "=======", *replace, ">>>>>>> REPLACE"])
    return f"{path}\n{body}\n"


def _blocks_for(path: str, old: str, new: str, context: int = 2) -> list[str]:
    """Small blocks that apply one after the other, each SEARCH unique (whole lines, overlaps counted) in
    the text the earlier blocks leave; one whole-file block when that cannot be had."""
    a, b = old.split("\n"), new.split("\n")
    ops = [op for op in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes() if op[0] != "equal"]
    blocks: list[tuple[list[str], list[str]]] = []
    current = old
    last_end = 0
    for _, i1, i2, j1, j2 in ops:
        ctx = context
        while True:
            s1, s2 = max(last_end, i1 - ctx), min(len(a), i2 + ctx)
            search = a[s1:s2]
            ok = (any(x.strip() for x in search) and not any(_is_marker(x) for x in search)
                  and len(_hits(current.split("\n"), search)) == 1)
            if ok or (s1 <= last_end and s2 == len(a)):
                break
            ctx += 1
        if not ok:
            return [_whole(path, a, b)]
        replace = b[j1 - (i1 - s1): j2 + (s2 - i2)]
        if any(_is_marker(x) for x in replace):
            return [_whole(path, a, b)]
        result = replace_once(current, search, replace)
        if not isinstance(result, str):
            return [_whole(path, a, b)]
        current = result
        last_end = s2
        blocks.append((search, replace))
    if current != new:
        return [_whole(path, a, b)]
    return [_block_text(path, s_, r_) for s_, r_ in blocks]


def _whole(path: str, a: list[str], b: list[str]) -> str:
    return _block_text(path, a, b)
