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


def reference_diff(template_dir: Path, reference_dir: Path, patterns: list[str]) -> str:
    # patterns: the task's editable files (e.g. *.py), so hint and task files beside a script never show
    """The level-0 hint: the unified diff from the task's template to its reference (editable files)."""
    from speedrunner.workspace.store import is_text, matches, unified_diff

    def text_files(root: Path) -> dict[str, str | None]:
        return {p.relative_to(root).as_posix(): p.read_text(encoding="utf-8") for p in sorted(root.rglob("*"))
                if p.is_file() and "__pycache__" not in p.parts and matches(p.relative_to(root).as_posix(), patterns)
                and is_text(p)}

    old, new = text_files(template_dir), text_files(reference_dir)
    return unified_diff({k: old.get(k) for k in new}, dict(new))


def select_hints(hints_dir: Path | None, levels: list[int], globs: list[str],
                 reference: tuple[Path, Path, list[str]] | None = None) -> list[Hint]:
    """Hints of the given levels from the task's folder, then files matching ``globs``, in order.

    ``reference`` = (template dir, reference dir, editable patterns): level 0, when no level_0 file
    exists, is then the diff between the two, generated on the spot."""
    out: list[Hint] = []
    has_level_0_file = hints_dir is not None and hints_dir.is_dir() and any(
        p.name.startswith("level_0_") and _LEVEL_FILE.match(p.name) for p in hints_dir.iterdir())
    if 0 in levels and not has_level_0_file:
        if reference is None:
            raise UserError("hints=[0] asks for the reference diff, but this task has no reference solution")
        diff = reference_diff(*reference)
        out.append(Hint(path=reference[1], level=0, kind="diff", text=f"```diff\n{diff.rstrip()}\n```"))
        levels = [lvl for lvl in levels if lvl != 0]
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
