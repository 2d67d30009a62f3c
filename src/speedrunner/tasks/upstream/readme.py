"""Read the record tables of the upstream README.

The README has one table per track (``## World record history`` for track 1, a ``track 2`` / ``GPT-2
Medium`` section for track 2). Columns are found by their header names (``#``, ``Record time``,
``Description``, ``Date``, ``Log``, ``Contributors``), so a reordered or shortened table still reads. Rows
may or may not start with ``|``. Snapshots from before the tables (late 2024) list the records as a
numbered markdown list, ``N. [T minutes: description](url) (date) [[log](path)]``; those are read too,
numbered as the list renders (item k is record k).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import unquote

_LINK = re.compile(r"\[((?:[^\[\]]|\[[^\[\]]*\])*)\]\(\s*([^()\s]*(?:\([^()]*\)[^()\s]*)*)\s*\)")
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
_TIME = re.compile(
    r"(?P<value>\d+(?:\.\d+)?)\s*(?P<unit>hours?|hrs?|h|minutes?|mins?|m|seconds?|secs?|s)\b\s*(?P<star>\*+)?",
    re.I,
)
_DATE = re.compile(r"\b(\d{1,2})/(\d{1,2})/(\d{2}|\d{4})\b")
_ISO_DATE = re.compile(r"\b(20\d\d)-(\d\d)-(\d\d)\b")
_PR = re.compile(r"github\.com/[^/]+/[^/]+/pull/(\d+)")
_REPO_URL = re.compile(r"^https?://github\.com/[^/]+/[^/]+/(?:blob|tree)/[^/]+/(.+)$")
_LIST_ITEM = re.compile(r"^\s*(\d+)\.\s+(.*)$")
_NO_LOG = {"", "-", "none", "n/a", "na", "—", "–"}


@dataclass
class Row:
    """One row of a record table (or one item of the older list)."""

    track: int
    number: int
    line: int
    time_text: str = ""
    minutes: float | None = None
    starred: bool = False
    description: str = ""
    description_links: list[str] = field(default_factory=list)
    date: str | None = None
    date_text: str = ""
    log_links: list[str] = field(default_factory=list)
    pr_links: list[str] = field(default_factory=list)
    contributors: str = ""

    @property
    def label(self) -> str:
        return f"track {self.track} record {self.number} (README line {self.line})"


@dataclass
class Readme:
    rows: dict[int, list[Row]] = field(default_factory=dict)  # track -> rows in README order
    notes: dict[int, list[str]] = field(default_factory=dict)  # track -> footnote lines, e.g. "(*)"
    rule_change_after: dict[int, int] = field(default_factory=dict)  # track -> last record before a change
    problems: list[str] = field(default_factory=list)


def parse_time(text: str) -> tuple[float | None, bool]:
    """``'45 minutes'`` -> (45.0, False); ``'5.8 hours'`` -> (348.0, False); ``'25.95 minutes*'`` -> starred."""
    m = _TIME.search(text)
    if not m:
        return None, "*" in text
    value, unit = float(m["value"]), m["unit"].lower()
    if unit.startswith("h"):
        value *= 60.0
    elif unit.startswith("s"):
        value /= 60.0
    return value, bool(m["star"]) or text.rstrip().endswith("*")


def parse_date(text: str) -> str | None:
    """``'05/28/24'`` (US order, as the README writes it) or ``'2024-05-28'`` -> ``'2024-05-28'``."""
    m = _DATE.search(text)
    if m:
        month, day, year = int(m[1]), int(m[2]), int(m[3])
        year = year + 2000 if year < 100 else year
        if 1 <= month <= 12 and 1 <= day <= 31:
            return f"{year:04d}-{month:02d}-{day:02d}"
    m = _ISO_DATE.search(text)
    return f"{m[1]}-{m[2]}-{m[3]}" if m else None


def link_target(raw: str) -> str:
    """A README link target as a path relative to the repository (anchor kept), or the URL itself."""
    t = raw.strip().strip("<>").strip()
    m = _REPO_URL.match(t)
    if m and unquote(m.group(1)).startswith("records/"):  # a link into the repository's own records
        t = m.group(1)
    if "://" in t or t.startswith("mailto:"):
        return t
    t = unquote(t)
    while t.startswith("./"):
        t = t[2:]
    return t.lstrip("/")


def is_local(target: str) -> bool:
    return "://" not in target and not target.startswith(("#", "mailto:"))


def plain(text: str) -> str:
    """Markdown cell text without link targets, bold marks or surplus spaces."""
    text = _LINK.sub(lambda m: m.group(1), text)
    text = text.replace("**", "").replace("\\|", "|")
    return re.sub(r"\s+", " ", text).strip()


def _split_cells(line: str) -> list[str]:
    """Split a table line at ``|``, but never inside a markdown link or at an escaped ``\\|``."""
    links: list[str] = []

    def keep(m: re.Match) -> str:
        links.append(m.group(0))
        return f"\x00{len(links) - 1}\x00"

    masked = _LINK.sub(keep, line.replace("\\|", "\x01"))
    s = masked.strip()
    if s.startswith("|"):
        s = s[1:]
    if s.endswith("|"):
        s = s[:-1]
    cells = s.split("|")
    restore = re.compile(r"\x00(\d+)\x00")
    return [restore.sub(lambda m: links[int(m.group(1))], c).replace("\x01", "\\|").strip() for c in cells]


def _column(name: str) -> str | None:
    n = name.strip().strip("*").strip().lower()
    if n in ("#", "no", "no.", "record", "record #", "rank", "n"):
        return "number"
    for key, words in (("time", ("time",)), ("description", ("description", "change", "what")),
                       ("date", ("date",)), ("log", ("log",)), ("contributors", ("contributor", "author", "by"))):
        if any(w in n for w in words):
            return key
    return None


def _track_of_heading(text: str, current: int | None) -> int | None:
    t = text.lower()
    m = re.search(r"track\s*(\d+)", t)
    if m:
        return int(m.group(1))
    if "medium" in t or "350m" in t:
        return 2
    if "record history" in t or "world record" in t:
        return 1
    return current


def _links_in(cell: str) -> list[tuple[str, str]]:
    return [(m.group(1), link_target(m.group(2))) for m in _LINK.finditer(cell)]


def _fill_row(row: Row, cols: dict[str, str]) -> None:
    row.time_text = plain(cols.get("time", ""))
    row.minutes, row.starred = parse_time(row.time_text)
    desc = cols.get("description", "")
    row.description = plain(desc)
    row.date_text = plain(cols.get("date", ""))
    row.date = parse_date(row.date_text)
    row.contributors = plain(cols.get("contributors", ""))
    for _text, target in _links_in(desc):
        if is_local(target) and target.startswith("records/"):
            continue  # a description that links the log itself (the log column has it too)
        row.description_links.append(target)
    seen: set[str] = set()
    for key in ("log", "description", "contributors", "time"):
        for _text, target in _links_in(cols.get(key, "")):
            if _PR.search(target):
                if target not in row.pr_links:
                    row.pr_links.append(target)
            elif is_local(target) and target not in seen and (key == "log" or target.startswith("records/")):
                seen.add(target)
                row.log_links.append(target)


def _parse_table(lines: list[str], start: int, track: int, out: Readme) -> int:
    """Parse the table whose header is ``lines[start]``; returns the index after it."""
    header = [_column(c) for c in _split_cells(lines[start])]
    i = start + 1
    if i < len(lines) and re.match(r"^\s*\|?\s*:?-+", lines[i]):
        i += 1
    while i < len(lines):
        line = lines[i]
        if not line.strip() or _HEADING.match(line) or line.strip() in ("---", "***"):
            break
        cells = _split_cells(line)
        if "|" not in line.replace("\\|", ""):
            break
        if len(cells) > len(header):  # extra cells belong to the last column
            cells = cells[: len(header) - 1] + [" | ".join(cells[len(header) - 1:])]
        cols: dict[str, str] = {}
        for key, cell in zip(header, cells, strict=False):
            if key and key not in cols:
                cols[key] = cell
        num = re.match(r"^\s*#?\s*(\d+)\s*$", plain(cols.get("number", "")))
        if not num:
            out.problems.append(f"README line {i + 1}: a table row without a record number, ignored")
            i += 1
            continue
        row = Row(track=track, number=int(num.group(1)), line=i + 1)
        _fill_row(row, cols)
        out.rows.setdefault(track, []).append(row)
        i += 1
    return i


def _parse_list_item(text: str, number: int, line: int, track: int) -> Row | None:
    """``[45 minutes: llm.c baseline](url) (05/28/24) [[training log](./records/...)] (note ...)``."""
    first = _LINK.match(text.strip())
    if not first:
        return None
    label, target = first.group(1), link_target(first.group(2))
    m = re.match(r"^\s*([^:]*\d[^:]*?)\s*:\s*(.*)$", label)
    if not m or parse_time(m.group(1))[0] is None:
        return None
    row = Row(track=track, number=number, line=line)
    row.time_text = m.group(1).strip()
    row.minutes, row.starred = parse_time(row.time_text)
    row.description = plain(m.group(2))
    if target and not is_local(target):
        row.description_links.append(target)
    row.date = parse_date(text)
    row.date_text = row.date or ""
    for _text, tgt in _links_in(text[first.end():]):
        if _PR.search(tgt):
            row.pr_links.append(tgt)
        elif is_local(tgt) and tgt.startswith("records/"):
            row.log_links.append(tgt)
    return row


def parse_readme(text: str) -> Readme:
    out = Readme()
    lines = text.splitlines()
    track: int | None = None
    in_code = False
    list_rows: dict[int, list[Row]] = {}
    list_count = 0
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.lstrip().startswith("```"):
            in_code = not in_code
            i += 1
            continue
        if in_code:
            i += 1
            continue
        h = _HEADING.match(line)
        if h:
            track = _track_of_heading(h.group(2), track)
            m = re.search(r"(?:timing|rule)s?\s+change\s+after\s+(?:the\s+)?(?:record\s*#?|#)\s*(\d+)",
                          h.group(2), re.I)
            if m:
                out.rule_change_after.setdefault(1 if track is None else track, int(m.group(1)))
            list_count = 0
            i += 1
            continue
        cells = [_column(c) for c in _split_cells(line)] if "|" in line else []
        if "number" in cells and "time" in cells:
            i = _parse_table(lines, i, track or 1, out)
            continue
        if track is not None and "(*)" in line:
            out.notes.setdefault(track, []).append(plain(line.lstrip("> ")))
        item = _LIST_ITEM.match(line)
        if item and track is not None:
            list_count += 1
            row = _parse_list_item(item.group(2), list_count, i + 1, track)
            if row is not None:
                list_rows.setdefault(track, []).append(row)
        elif line.strip() and not line.startswith((" ", "\t")):
            list_count = 0
        i += 1
    for t, rows in list_rows.items():
        if t not in out.rows:  # a list only counts where the track has no table
            out.rows[t] = rows
    return out
