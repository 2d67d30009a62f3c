"""The hint (knowledge) store: select hint files by level or glob and format them for a prompt.

Hint files live in a task's hint folder as ``level_<L>_<kind>.<ext>`` (L = 0 diff, 1 pseudocode,
2 text description, 3 mini-paper). The formatted text is clean markdown, one section per file.
"""

from __future__ import annotations

import glob
import re
from dataclasses import dataclass
from pathlib import Path

from speedrunner.core.errors import UserError

LEVEL_NAMES = {0: "the reference diff", 1: "pseudocode", 2: "text description", 3: "mini-paper"}
_LEVEL_FILE = re.compile(r"^level_(\d+)_([A-Za-z0-9_-]+)\.(md|txt|patch|diff)$")


@dataclass(frozen=True)
class Hint:
    path: Path
    level: int | None
    kind: str
    text: str

    @property
    def title(self) -> str:
        if self.level is not None:
            return f"Hint level {self.level}: {LEVEL_NAMES.get(self.level, self.kind.replace('_', ' '))}"
        return f"Note: {self.path.stem.replace('_', ' ')}"


def _read(path: Path, level: int | None, kind: str) -> Hint:
    try:
        text = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: cannot read hint file: {e}") from None
    return Hint(path=path, level=level, kind=kind, text=text)


def select_hints(hints_dir: Path | None, levels: list[int], globs: list[str]) -> list[Hint]:
    """Hints of the given levels from the task's folder, then files matching ``globs``, in order."""
    out: list[Hint] = []
    if levels:
        if hints_dir is None or not hints_dir.is_dir():
            raise UserError(
                f"hints={levels} asked for, but this task has no hint folder; use hints=[] or "
                "knowledge_src_paths=[GLOB]"
            )
        by_level: dict[int, list[Path]] = {}
        for p in sorted(hints_dir.iterdir()):
            m = _LEVEL_FILE.match(p.name)
            if m:
                by_level.setdefault(int(m.group(1)), []).append(p)
        for lvl in levels:
            if lvl not in by_level:
                have = sorted(by_level) or "none"
                raise UserError(f"{hints_dir}: no hint file for level {lvl} (levels present: {have})")
            for p in by_level[lvl]:
                m = _LEVEL_FILE.match(p.name)
                assert m is not None
                out.append(_read(p, lvl, m.group(2)))
    for pattern in globs:
        matches = sorted(glob.glob(str(Path(pattern).expanduser()), recursive=True))
        if not matches:
            raise UserError(f"knowledge_src_paths: {pattern!r} matches no file")
        for m in matches:
            p = Path(m)
            if p.is_file():
                lm = _LEVEL_FILE.match(p.name)
                out.append(_read(p, int(lm.group(1)) if lm else None, lm.group(2) if lm else p.stem))
    return out


def format_hints(hints: list[Hint]) -> str:
    """Markdown, one section per hint file; never a Python repr of a list."""
    parts = []
    for h in hints:
        parts.append(f"### {h.title}\n\n{h.text}\n")
    return "\n".join(parts).strip()
