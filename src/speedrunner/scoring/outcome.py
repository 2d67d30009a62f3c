"""Turn an execution into an Outcome: status, metrics, validity and the reason, all from the log."""

from __future__ import annotations

import math
from pathlib import Path

from speedrunner.core.types import ExecResult, Outcome, Status
from speedrunner.tasks.metrics import Parser, parse_metrics
from speedrunner.tasks.spec import Task

TAIL_LINES = 12


def read_log(path: str | Path, limit: int = 8 * 1024 * 1024) -> str:
    """The log's text; for a huge log, its last ``limit`` bytes (the metric lines are at the end)."""
    p = Path(path)
    try:
        size = p.stat().st_size
    except FileNotFoundError:
        return ""
    with open(p, "rb") as f:
        if size > limit:
            f.seek(size - limit)
        return f.read().decode("utf-8", errors="replace")


def tail(text: str, n: int = TAIL_LINES, width: int = 300) -> str:
    """The last ``n`` lines, each cut to ``width`` characters (reasons go back into prompts)."""
    lines = text.rstrip().splitlines()[-n:]
    return "\n".join(line if len(line) <= width else line[:width] + " ..." for line in lines)


def contradicted(parsers: list[Parser], logs: dict[str, str]) -> list[str]:
    """Values read from the *first* match of a pattern that a later match of it contradicts.

    ``match: first`` is for a value the script prints once (e.g. ``val_tokens:N``). A log that gives it
    again with another value cannot be read either way: in particular a record script's log starts with
    its own source, so a line planted in the code would otherwise outvote what the script printed."""
    out = []
    for p in parsers:
        if p.match != "first":
            continue
        seen: dict[str, list[str]] = {}
        for m in p.pattern.finditer(logs.get(p.source, "")):
            for key, raw in m.groupdict().items():
                if raw is not None and raw not in seen.setdefault(key, []):
                    seen[key].append(raw)
        for key, raws in seen.items():
            if len({_num(r) for r in raws}) > 1:
                out.append(f"{key} is given more than once in the log, with different values ({', '.join(raws[:5])})")
    return out


def _num(raw: str) -> float | str:
    try:
        return float(raw)
    except ValueError:
        return raw


def score(task: Task, ex: ExecResult, changed_files: list[str] | None = None) -> Outcome:
    logs = {"stdout": read_log(ex.stdout_path), "stderr": read_log(ex.stderr_path)}
    metrics = parse_metrics(task.parsers, logs)
    metrics["wall_s"] = round(ex.wall_s, 4)
    metrics["wall_ms"] = round(ex.wall_s * 1000, 1)
    if ex.cpu_s is not None:
        metrics["cpu_s"] = round(ex.cpu_s, 3)
    if ex.exit_code is not None:
        metrics["exit_code"] = float(ex.exit_code)
    primary = metrics.get(task.metric.name)
    base = dict(metrics=metrics, metric=primary, exit_code=ex.exit_code, wall_s=round(ex.wall_s, 4))

    def buggy(reason: str) -> Outcome:
        return Outcome(status=Status.BUGGY, valid=False, reason=reason, **base)

    if ex.killed_reason:
        return buggy(f"{ex.killed_reason}; last lines:\n{tail(logs['stderr'] or logs['stdout'])}")
    if ex.exit_code != 0:
        return buggy(f"exit code {ex.exit_code}; last lines:\n{tail(logs['stderr'] or logs['stdout'])}")
    if ex.violation:
        return Outcome(status=Status.INVALID, valid=False, reason=ex.violation, **base)
    if changed_files:
        return Outcome(status=Status.INVALID, valid=False,
                       reason=f"the run modified files it must not: {', '.join(changed_files)}", **base)
    if primary is None:
        return buggy(f"no {task.metric.name} found in the log; last lines:\n{tail(logs['stdout'])}")
    if math.isnan(primary) or math.isinf(primary):
        return buggy(f"{task.metric.name} is not a finite number in the log")
    failures = contradicted(task.parsers, logs) + [r for c in task.conditions if (r := c.check(metrics))]
    if failures:
        return Outcome(status=Status.INVALID, valid=False, reason="; ".join(failures), **base)
    return Outcome(status=Status.VALID, valid=True, reason="", **base)
