"""Integrity checks that do not trust the node: protected files, and changes worth a human's look.

Protected files are the task's data, validation and test splits and evaluation helpers. Files inside the
workspace are named by globs; files outside it (the data folder) by absolute paths. Each is fingerprinted
before and after every run: by SHA-256 up to ``HASH_LIMIT`` bytes, above that by size, mtime and inode
(hashing gigabytes of shards for every node would cost more than the node).
"""

from __future__ import annotations

import re
from pathlib import Path

from speedrunner.workspace.fsutil import sha256_file
from speedrunner.workspace.store import matches

HASH_LIMIT = 256 * 1024 * 1024


def protected_paths(workspace: Path, patterns: list[str]) -> list[Path]:
    out: list[Path] = []
    for pat in patterns:
        p = Path(pat)
        if p.is_absolute():
            out += sorted(Path("/").glob(pat.lstrip("/"))) if any(c in pat for c in "*?[") else [p]
    for f in sorted(workspace.rglob("*")) if workspace.is_dir() else []:
        rel = f.relative_to(workspace).as_posix()
        if f.is_file() and matches(rel, [p for p in patterns if not Path(p).is_absolute()]):
            out.append(f)
    return out


def fingerprint(path: Path) -> str:
    try:
        st = path.stat()
    except FileNotFoundError:
        return "missing"
    if st.st_size <= HASH_LIMIT:
        return sha256_file(path)
    return f"stat:{st.st_size}:{st.st_mtime_ns}:{st.st_ino}"


def snapshot(paths: list[Path]) -> dict[str, str]:
    return {str(p): fingerprint(p) for p in paths}


def changed(before: dict[str, str], after_paths: list[Path]) -> list[str]:
    now = snapshot(after_paths)
    return sorted(p for p in before if now.get(p, "missing") != before[p])


def untimed_work_flag(task, outcome, baseline, factor: float = 1.5, slack_ms: float = 2000.0) -> str | None:
    """For a task whose metric is a time in ms measured by the script: flag a node whose untimed work
    (the process's wall time minus the time it reports) grew well beyond the baseline's. Training moved
    outside the timer shows up there; a reported time that is simply too large fails ``train_time <= wall_ms``."""
    if task.metric.kind != "time" or task.metric.unit != "ms" or baseline is None or not outcome.valid:
        return None
    name = task.metric.name
    try:
        base = baseline.metrics["wall_ms"] - baseline.metrics[name]
        mine = outcome.metrics["wall_ms"] - outcome.metrics[name]
    except (KeyError, TypeError):
        return None
    if mine > max(base, 0.0) * factor + slack_ms:
        return (f"untimed work grew from {base / 1000:.1f} s (baseline) to {mine / 1000:.1f} s: is work being done "
                f"outside the timer?")
    return None


def suspicious_flags(diff_text: str, rules: list[tuple[str, str]]) -> list[str]:
    """Messages of the rules whose pattern matches a changed (added or removed) line of ``diff_text``."""
    changed_lines = [line[1:] for line in diff_text.splitlines()
                     if line[:1] in "+-" and not line.startswith(("+++", "---"))]
    flags = []
    for pattern, message in rules:
        rx = re.compile(pattern)
        hits = [line.strip() for line in changed_lines if rx.search(line)]
        if hits:
            flags.append(f"{message} (e.g. `{hits[0][:100]}`)")
    return flags
