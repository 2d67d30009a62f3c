"""The paper's views of a set of runs, as lists of plain rows (dicts) ready for Markdown, CSV and JSON.

A run's score is its FSR on ladder tasks (summary.json has an ``fsr`` key) and its speedup elsewhere.
A *cell* is one model x scaffold x hint regime; a cell's tasks are averaged with equal weight.

- Paper aggregation (Zhao et al., 2025, reference code): every FSR outside [0, 3] is set to 0, each
  task keeps the mean of its best 3 runs, and the cell is the mean over tasks. It flatters: the best
  3 of many seeds are kept.
- All-runs mean: the same clipping, each task keeps the mean of all its runs, the cell is the mean
  over tasks; SEM = sqrt(sum_t s_t^2 / n_t) / T with s_t the sample std of task t's runs (a task
  with one run borrows the cell's pooled within-task variance; no SEM when no task has two runs).
  The unclipped mean is reported beside it.
- IQM: the interquartile mean (25% trimmed mean, as scipy.stats.trim_mean) over runs, with a 95%
  percentile bootstrap CI that resamples runs within each task (stratified), seeded.

Speedup runs get the same views without clipping.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

import numpy as np

from speedrunner.report.load import RunRec

SCAFFOLD_ORDER = ["flat", "tree", "forest", "aide", "multi_aide"]
HINT_ORDER = ["none", "L0", "L1", "L2", "L3", "L1+2", "L1+2+3"]
OPERATORS = ["draft", "improve", "debug"]
FSR_RANGE = (0.0, 3.0)


def _order(value: str, order: list[str]) -> tuple[int, str]:
    return (order.index(value), "") if value in order else (len(order), value)


def cell_sort_key(model: str, scaffold: str, hints: str) -> tuple:
    return (model, _order(hints, HINT_ORDER), _order(scaffold, SCAFFOLD_ORDER))


def task_sort_key(task: str) -> tuple:
    """record_2 before record_10."""
    head, _, tail = task.rpartition("_")
    return (head, int(tail), "") if tail.isdigit() else (task, -1, task)


def clip_fsr(v: float) -> float:
    """The reference code's rule: an FSR outside [0, 3] counts as 0."""
    return v if FSR_RANGE[0] <= v <= FSR_RANGE[1] else 0.0


def top_k_mean(values: Iterable[float], k: int = 3) -> float | None:
    v = sorted(values, reverse=True)[:k]
    return sum(v) / len(v) if v else None


def iqm(values: Iterable[float]) -> float | None:
    x = np.sort(np.asarray(list(values), dtype=float))
    if x.size == 0:
        return None
    cut = int(0.25 * x.size)
    return float(x[cut:x.size - cut].mean())


def bootstrap_iqm_ci(strata: list[list[float]], n_boot: int = 2000, seed: int = 0,
                     level: float = 0.95) -> tuple[float | None, float | None]:
    """Percentile bootstrap CI of the IQM, resampling within each stratum (task)."""
    strata = [s for s in strata if s]
    n = sum(len(s) for s in strata)
    if n == 0:
        return None, None
    rng = np.random.default_rng(seed)
    parts = []
    for s in strata:
        arr = np.asarray(s, dtype=float)
        parts.append(arr[rng.integers(0, arr.size, size=(n_boot, arr.size))])
    samples = np.sort(np.concatenate(parts, axis=1), axis=1)
    cut = int(0.25 * n)
    stats = samples[:, cut:n - cut].mean(axis=1)
    a = (1 - level) / 2
    lo, hi = np.quantile(stats, [a, 1 - a])
    return float(lo), float(hi)


def _mean(v: list[float]) -> float | None:
    return sum(v) / len(v) if v else None


def _var(v: list[float]) -> float | None:
    if len(v) < 2:
        return None
    m = sum(v) / len(v)
    return sum((x - m) ** 2 for x in v) / (len(v) - 1)


def _sem_of_task_means(per_task: dict[str, list[float]]) -> float | None:
    """SEM of the mean over tasks of per-task means (runs independent; tasks with one run borrow the
    pooled within-task variance)."""
    T = len(per_task)
    if T == 0:
        return None
    num = sum((len(v) - 1) * _var(v) for v in per_task.values() if len(v) >= 2)
    den = sum(len(v) - 1 for v in per_task.values() if len(v) >= 2)
    if den == 0:
        return None
    pooled = num / den
    total = sum(((_var(v) if len(v) >= 2 else pooled) / len(v)) for v in per_task.values())
    return math.sqrt(total) / T


def _r(x: float | None, nd: int = 4) -> float | None:
    return None if x is None else round(float(x), nd)


def _scored(runs: list[RunRec]) -> list[RunRec]:
    return [r for r in runs if r.finished and r.score is not None]


def _value(r: RunRec) -> float:
    s = r.score
    assert s is not None
    return clip_fsr(s) if r.kind == "fsr" else s


# ---------------------------------------------------------------------------------------- rows
def run_rows(runs: list[RunRec]) -> list[dict[str, Any]]:
    rows = []
    for r in runs:
        s = r.summary
        rows.append({
            "path": str(r.path), "task": r.task, "model": r.model, "scaffold": r.scaffold, "hints": r.hints,
            "seed": r.seed, "status": s.get("status"), "stop_reason": s.get("stop_reason"), "kind": r.kind, "score": _r(r.score, 6),
            "fsr": _r(_num(s.get("fsr")), 6), "fsr_source": s.get("fsr_source"), "fsr_note": s.get("fsr_note"),
            "speedup": _r(_num(s.get("speedup")), 6), "t_R": s.get("t_R"), "t_next": s.get("t_next"),
            "t_agent": s.get("t_agent"), "t_agent_source": s.get("t_agent_source"), "drift": s.get("drift"),
            "reeval_chosen_node": (s.get("reeval") or {}).get("chosen_node") if isinstance(s.get("reeval"), dict) else None,
            "metric": s.get("metric"), "baseline_metric": s.get("baseline_metric"),
            "best_metric": s.get("best_metric"), "best_node": s.get("best_node"), "n_nodes": s.get("n_nodes"),
            "n_valid": s.get("n_valid"), "n_buggy": s.get("n_buggy"), "llm_calls": s.get("llm_calls", 0),
            "tokens_in": s.get("tokens_in", 0), "tokens_out": s.get("tokens_out", 0), "usd": s.get("usd", 0.0),
            "wall_s": s.get("wall_s"),
            "judge_score": _r(_judge_best(r)),
            "repro_line_recall": _r(_num((r.repro or {}).get("line_recall"))),
            "repro_line_precision": _r(_num((r.repro or {}).get("line_precision"))),
            "repro_hunk_recall": _r(_num((r.repro or {}).get("hunk_recall"))),
        })
    return rows


def _num(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    v = float(v)
    return v if math.isfinite(v) else None


def per_task_rows(runs: list[RunRec]) -> list[dict[str, Any]]:
    groups: dict[tuple, list[RunRec]] = defaultdict(list)
    for r in _scored(runs):
        groups[(r.kind, r.model, r.scaffold, r.hints, r.task)].append(r)
    rows = []
    for (kind, model, scaffold, hints, task), rs in groups.items():
        vals = [_value(r) for r in rs]
        raw = [r.score for r in rs]
        var = _var(vals)
        rows.append({
            "kind": kind, "task": task, "model": model, "scaffold": scaffold, "hints": hints, "runs": len(rs),
            "mean": _r(_mean(vals)), "sem": _r(math.sqrt(var / len(vals)) if var is not None else None),
            "top3_mean": _r(top_k_mean(vals)), "max": _r(max(vals)), "min": _r(min(vals)),
            "raw_mean": _r(_mean(raw)),  # type: ignore[arg-type]
            "n_clipped": sum(1 for r in rs if kind == "fsr" and clip_fsr(r.score) != r.score),  # type: ignore[arg-type]
        })
    rows.sort(key=lambda x: (x["kind"], task_sort_key(x["task"]), cell_sort_key(x["model"], x["scaffold"], x["hints"])))
    return rows


def cell_rows(runs: list[RunRec], n_boot: int = 2000, seed: int = 0) -> list[dict[str, Any]]:
    groups: dict[tuple, list[RunRec]] = defaultdict(list)
    for r in _scored(runs):
        groups[(r.kind, r.model, r.scaffold, r.hints)].append(r)
    unscored: dict[tuple, int] = defaultdict(int)
    for r in runs:
        if r.finished and r.score is None:
            unscored[(r.kind, r.model, r.scaffold, r.hints)] += 1
    rows = []
    for key in set(groups) | set(unscored):
        kind, model, scaffold, hints = key
        rs = groups.get(key, [])
        by_task: dict[str, list[float]] = defaultdict(list)
        raw_by_task: dict[str, list[float]] = defaultdict(list)
        for r in rs:
            by_task[r.task].append(_value(r))
            raw_by_task[r.task].append(r.score)  # type: ignore[arg-type]
        top3 = [top_k_mean(v) for v in by_task.values()]
        means = [_mean(v) for v in by_task.values()]
        raw = [_mean(v) for v in raw_by_task.values()]
        lo, hi = bootstrap_iqm_ci(list(by_task.values()), n_boot=n_boot, seed=seed)
        rows.append({
            "kind": kind, "model": model, "scaffold": scaffold, "hints": hints, "tasks": len(by_task),
            "runs": len(rs), "unscored_runs": unscored.get(key, 0),
            "runs_per_task_min": min((len(v) for v in by_task.values()), default=0),
            "top3_mean": _r(_mean(top3)),  # type: ignore[arg-type]
            "mean": _r(_mean(means)),  # type: ignore[arg-type]
            "sem": _r(_sem_of_task_means(by_task)),
            "raw_mean": _r(_mean(raw)),  # type: ignore[arg-type]
            "iqm": _r(iqm(v for vs in by_task.values() for v in vs)), "iqm_ci_low": _r(lo), "iqm_ci_high": _r(hi),
        })
    rows.sort(key=lambda x: (x["kind"], cell_sort_key(x["model"], x["scaffold"], x["hints"])))
    return rows


def iqm_rows(runs: list[RunRec], n_boot: int = 2000, seed: int = 0) -> list[dict[str, Any]]:
    """IQM by scaffold (models and tasks pooled), per hint regime, as the paper's scaffold comparison."""
    groups: dict[tuple, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    models: dict[tuple, set[str]] = defaultdict(set)
    for r in _scored(runs):
        key = (r.kind, r.hints, r.scaffold)
        groups[key][r.task].append(_value(r))
        models[key].add(r.model)
    rows = []
    for key, by_task in groups.items():
        kind, hints, scaffold = key
        vals = [v for vs in by_task.values() for v in vs]
        lo, hi = bootstrap_iqm_ci(list(by_task.values()), n_boot=n_boot, seed=seed)
        rows.append({"kind": kind, "hints": hints, "scaffold": scaffold, "models": len(models[key]),
                     "tasks": len(by_task), "runs": len(vals), "iqm": _r(iqm(vals)), "ci_low": _r(lo),
                     "ci_high": _r(hi), "mean": _r(_mean(vals))})
    rows.sort(key=lambda x: (x["kind"], _order(x["hints"], HINT_ORDER), _order(x["scaffold"], SCAFFOLD_ORDER)))
    return rows


def node_rows(runs: list[RunRec]) -> list[dict[str, Any]]:
    """Node types per cell (all runs, finished or not): counts, status per operator, buggy rate, and how
    often a node beat its (valid) parent."""
    acc: dict[tuple, dict[str, Any]] = {}
    for r in runs:
        key = (r.model, r.scaffold, r.hints)
        a = acc.setdefault(key, defaultdict(int))
        a["runs"] += 1
        by_id = {n.id: n for n in r.nodes}
        minimize = r.summary.get("direction", "minimize") != "maximize"
        for n in r.nodes:
            if n.parent is None or n.operator == "root":
                continue
            op = n.operator
            a["nodes"] += 1
            a[op] += 1
            a[f"{op}_{n.status}"] += 1
            a[n.status] += 1
            p = by_id.get(n.parent)
            if p is not None and p.status == "valid" and p.metric is not None:
                a[f"{op}_vs_parent"] += 1
                if n.status == "valid" and n.metric is not None and (
                        n.metric < p.metric if minimize else n.metric > p.metric):
                    a[f"{op}_beat_parent"] += 1
    rows = []
    for (model, scaffold, hints), a in acc.items():
        nodes = a["nodes"]
        row: dict[str, Any] = {"model": model, "scaffold": scaffold, "hints": hints, "runs": a["runs"],
                               "nodes": nodes}
        for op in OPERATORS:
            row[op] = a[op]
        for st in ("valid", "invalid", "buggy", "pending"):
            row[st] = a[st]
        row["buggy_rate"] = _r(a["buggy"] / nodes if nodes else None)
        for op in OPERATORS:
            row[f"{op}_buggy_rate"] = _r(a[f"{op}_buggy"] / a[op] if a[op] else None)
            row[f"{op}_beat_parent_rate"] = _r(a[f"{op}_beat_parent"] / a[f"{op}_vs_parent"]
                                               if a[f"{op}_vs_parent"] else None)
        rows.append(row)
    rows.sort(key=lambda x: cell_sort_key(x["model"], x["scaffold"], x["hints"]))
    return rows


def cost_rows(runs: list[RunRec]) -> list[dict[str, Any]]:
    """Spend per cell: per run, and per FSR point (clipped FSR summed over the cell's scored ladder runs)."""
    acc: dict[tuple, dict[str, float]] = {}
    for r in runs:
        s = r.summary
        a = acc.setdefault((r.model, r.scaffold, r.hints), defaultdict(float))
        a["runs"] += 1
        a["llm_calls"] += float(s.get("llm_calls") or 0)
        a["tokens_in"] += float(s.get("tokens_in") or 0)
        a["tokens_out"] += float(s.get("tokens_out") or 0)
        a["usd"] += float(s.get("usd") or 0.0)
        if r.kind == "fsr" and r.finished and r.score is not None:
            a["fsr_runs"] += 1
            a["fsr_points"] += clip_fsr(r.score)
            a["fsr_usd"] += float(s.get("usd") or 0.0)
            a["fsr_tokens"] += float(s.get("tokens_in") or 0) + float(s.get("tokens_out") or 0)
    rows = []
    for (model, scaffold, hints), a in acc.items():
        n = a["runs"]
        pts = a["fsr_points"]
        rows.append({
            "model": model, "scaffold": scaffold, "hints": hints, "runs": int(n), "llm_calls": int(a["llm_calls"]),
            "tokens_in": int(a["tokens_in"]), "tokens_out": int(a["tokens_out"]), "usd": _r(a["usd"], 6),
            "usd_per_run": _r(a["usd"] / n if n else None, 6),
            "tokens_per_run": _r((a["tokens_in"] + a["tokens_out"]) / n if n else None, 1),
            "fsr_runs": int(a["fsr_runs"]), "fsr_points": _r(pts),
            "usd_per_fsr_point": _r(a["fsr_usd"] / pts if pts > 0 else None, 6),
            "tokens_per_fsr_point": _r(a["fsr_tokens"] / pts if pts > 0 else None, 1),
        })
    rows.sort(key=lambda x: cell_sort_key(x["model"], x["scaffold"], x["hints"]))
    return rows


def _judge_best(r: RunRec) -> float | None:
    j = r.judge or {}
    best = j.get("best_node", r.summary.get("best_node"))  # judge.json names the node the score stands on
    node = (j.get("nodes") or {}).get(str(best))
    return _num(node.get("score")) if isinstance(node, dict) else None


def judge_rows(runs: list[RunRec]) -> list[dict[str, Any]]:
    """Similarity-judge results (judge.json), per cell: the mean score of each run's best node, and how
    often each key change was reproduced (by any judged node of the run)."""
    groups: dict[tuple, list[RunRec]] = defaultdict(list)
    for r in runs:
        if r.judge:
            groups[(r.model, r.scaffold, r.hints, r.task)].append(r)
    rows = []
    for (model, scaffold, hints, task), rs in groups.items():
        best = [s for s in (_judge_best(r) for r in rs) if s is not None]
        any_node = []
        changes: dict[str, list[float]] = defaultdict(list)
        for r in rs:
            nodes = [n for n in (r.judge.get("nodes") or {}).values() if isinstance(n, dict)]  # type: ignore[union-attr]
            scores = [_num(n.get("score")) for n in nodes]
            scores = [s for s in scores if s is not None]
            if scores:
                any_node.append(max(scores))
            per_change: dict[str, float] = {}
            for n in nodes:
                for c in n.get("changes") or []:
                    name = str(c.get("change", "?"))
                    per_change[name] = max(per_change.get(name, 0.0), float(c.get("credit", 0.0) or 0.0))
            for name, v in per_change.items():
                changes[name].append(v)
        rows.append({"model": model, "scaffold": scaffold, "hints": hints, "task": task, "runs": len(rs),
                     "best_node_score": _r(_mean(best)), "max_node_score": _r(_mean(any_node)),
                     "changes": {k: _r(_mean(v)) for k, v in changes.items()}})
    rows.sort(key=lambda x: (task_sort_key(x["task"]), cell_sort_key(x["model"], x["scaffold"], x["hints"])))
    return rows


def repro_rows(runs: list[RunRec]) -> list[dict[str, Any]]:
    """Reproduction distance (scoring/repro.py) per task and cell, over finished runs that have one: the
    mean over runs of the best node's line recall, line precision (runs whose best changed something)
    and hunk recall, and of the run's best line recall over all its nodes; embedding similarities when
    they were computed."""
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for r in runs:
        if r.finished and r.repro:
            groups[(r.task, r.model, r.scaffold, r.hints)].append(r.repro)
    rows = []
    for (task, model, scaffold, hints), reps in groups.items():
        def mean_of(key: str, sub: str | None = None, reps: list[dict[str, Any]] = reps) -> float | None:
            vals = [_num((x.get(sub) or {}).get(key) if sub else x.get(key)) for x in reps]
            return _r(_mean([v for v in vals if v is not None]))

        rows.append({"task": task, "model": model, "scaffold": scaffold, "hints": hints, "runs": len(reps),
                     "line_recall": mean_of("line_recall"), "line_precision": mean_of("line_precision"),
                     "line_f1": mean_of("line_f1"), "hunk_recall": mean_of("hunk_recall"),
                     "hunk_recall_full": mean_of("hunk_recall_full"),
                     "max_line_recall": mean_of("max_line_recall"), "max_hunk_recall": mean_of("max_hunk_recall"),
                     "embed_similarity_current": mean_of("similarity_current", "embedding"),
                     "embed_similarity_next": mean_of("similarity_next", "embedding")})
    rows.sort(key=lambda x: (task_sort_key(x["task"]), cell_sort_key(x["model"], x["scaffold"], x["hints"])))
    return rows


def repro_model_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The per-task rows averaged per model (tasks with equal weight)."""
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        groups[r["model"]].append(r)
    out = []
    for model, rs in sorted(groups.items()):
        def m(key: str, rs: list[dict[str, Any]] = rs) -> float | None:
            return _r(_mean([x[key] for x in rs if x[key] is not None]))

        out.append({"model": model, "tasks": len({x["task"] for x in rs}), "runs": sum(x["runs"] for x in rs),
                    "line_recall": m("line_recall"), "line_precision": m("line_precision"),
                    "hunk_recall": m("hunk_recall"), "max_line_recall": m("max_line_recall")})
    return out


def aggregate(runs: list[RunRec], n_boot: int = 2000, seed: int = 0) -> dict[str, Any]:
    return {
        "runs": run_rows(runs),
        "per_task": per_task_rows(runs),
        "cells": cell_rows(runs, n_boot=n_boot, seed=seed),
        "iqm_by_scaffold": iqm_rows(runs, n_boot=n_boot, seed=seed),
        "node_types": node_rows(runs),
        "cost": cost_rows(runs),
        "judge": judge_rows(runs),
        "repro": (rp := repro_rows(runs)),
        "repro_by_model": repro_model_rows(rp),
    }
