"""``speedrunner report``: run folders in, report.md + CSV + JSON + PNG plots out."""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from speedrunner.report.aggregate import aggregate
from speedrunner.report.load import RunRec, load_runs

MAX_RUN_ROWS_MD = 200

PAPER_NOTE = (
    "**top-3 (paper)** is the aggregation of the original benchmark's reference code: every FSR outside "
    "[0, 3] is set to 0, each task keeps the mean of its best 3 runs, and the cell is the mean over tasks. "
    "Keeping the best 3 of several seeds flatters a cell; **all-runs mean** applies the same [0, 3] rule "
    "but averages every run of a task (then tasks with equal weight), with its SEM; **raw** is that mean "
    "without the [0, 3] rule. **IQM** is the interquartile mean over runs with a 95% bootstrap CI "
    "(runs resampled within each task, seeded).")
SPEEDUP_NOTE = (
    "Tasks without FSR (no ladder) are scored by speedup = baseline / best (x-fold, 1.0 = no gain); "
    "no clipping applies.")


def fmt(v: Any, nd: int = 3) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    return str(v).replace("|", "\\|")


def md_table(rows: Sequence[dict[str, Any]], cols: Sequence[tuple[str, str]], nd: int = 3) -> str:
    if not rows:
        return "_(none)_\n"
    head = "| " + " | ".join(h for _, h in cols) + " |"
    sep = "|" + "|".join("---" for _ in cols) + "|"
    body = ["| " + " | ".join(fmt(r.get(k), nd) for k, _ in cols) + " |" for r in rows]
    return "\n".join([head, sep, *body]) + "\n"


def write_csv(path: Path, rows: list[dict[str, Any]]) -> Path:
    keys: list[str] = []
    for r in rows:
        for k in r:
            if k not in keys:
                keys.append(k)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=keys or ["empty"])
        w.writeheader()
        for r in rows:
            w.writerow({k: json.dumps(v) if isinstance(v, (dict, list)) else v for k, v in r.items()})
    return path


def _with_ci(rows: list[dict[str, Any]], lo: str, hi: str) -> list[dict[str, Any]]:
    out = []
    for r in rows:
        r = dict(r)
        r["ci"] = f"[{fmt(r.get(lo))}, {fmt(r.get(hi))}]" if r.get(lo) is not None else "-"
        out.append(r)
    return out


def _with_pm(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for r in rows:
        r = dict(r)
        r["mean_pm"] = f"{fmt(r['mean'])} ± {fmt(r['sem'])}" if r.get("sem") is not None else fmt(r.get("mean"))
        out.append(r)
    return out


def agent_nodes(runs: list[RunRec]) -> int:
    """Nodes other than each run's baseline v_0."""
    return sum(1 for r in runs for n in r.nodes if n.parent is not None)


def render_markdown(data: dict[str, Any], runs: list[RunRec], inputs: list[str], plots: list[Path]) -> str:
    L: list[str] = []
    n_nodes = agent_nodes(runs)
    by_status: dict[str, int] = {}
    for r in runs:
        st = str(r.summary.get("status") or "?")
        by_status[st] = by_status.get(st, 0) + 1
    states = ", ".join(f"{n} {st}" for st, n in sorted(by_status.items(), key=lambda kv: kv[0] != "finished"))
    L.append("# speedrunner report\n")
    L.append(f"{len(runs)} runs ({states}), {n_nodes} agent nodes, from: "
             + ", ".join(f"`{p}`" for p in inputs) + "\n")
    if set(by_status) - {"finished"}:
        L.append("Only finished runs are aggregated; the others (still running, or stopped by a budget cap: "
                 "see `stop_reason`) are listed under Runs, and counted in node types and cost.\n")
    kinds = [k for k in ("fsr", "speedup") if any(c["kind"] == k for c in data["cells"])]
    for kind in kinds:
        name = "FSR" if kind == "fsr" else "Speedup"
        cells = _with_ci(_with_pm([c for c in data["cells"] if c["kind"] == kind]), "iqm_ci_low", "iqm_ci_high")
        L.append(f"## {name}: mean over tasks, by model × scaffold × hints\n")
        L.append((PAPER_NOTE if kind == "fsr" else SPEEDUP_NOTE) + "\n")
        top3 = "top-3 (paper)" if kind == "fsr" else "top-3 of runs"
        cols = [("model", "model"), ("scaffold", "scaffold"), ("hints", "hints"), ("tasks", "tasks"),
                ("runs", "runs"), ("top3_mean", top3), ("mean_pm", "all-runs mean ± SEM")]
        if kind == "fsr":
            cols.append(("raw_mean", "raw"))
        cols += [("iqm", "IQM"), ("ci", "IQM 95% CI")]
        if any(c["unscored_runs"] for c in cells):
            cols.append(("unscored_runs", f"runs without {name}"))
        L.append(md_table(cells, cols))
        iq = _with_ci([r for r in data["iqm_by_scaffold"] if r["kind"] == kind], "ci_low", "ci_high")
        L.append(f"### IQM of {name} by scaffold (models and tasks pooled, per hint regime)\n")
        L.append(md_table(iq, [("hints", "hints"), ("scaffold", "scaffold"), ("models", "models"),
                               ("tasks", "tasks"), ("runs", "runs"), ("iqm", "IQM"), ("ci", "95% CI"),
                               ("mean", "mean")]))
        pt = _with_pm([r for r in data["per_task"] if r["kind"] == kind])
        L.append(f"### {name} per task\n")
        cols = [("task", "task"), ("model", "model"), ("scaffold", "scaffold"), ("hints", "hints"),
                ("runs", "runs"), ("top3_mean", top3), ("mean_pm", "mean ± SEM"), ("min", "min"),
                ("max", "max")]
        if kind == "fsr":
            cols += [("raw_mean", "raw mean"), ("n_clipped", "outside [0, 3]")]
        L.append(md_table(pt, cols))
    if not kinds:
        L.append("No finished, scored run: nothing to aggregate yet.\n")
    L.append("## Node types\n")
    L.append("Agent nodes only (the baseline v_0 is not counted). *beat parent*: share of nodes with a valid "
             "parent that were valid and better than it.\n")
    L.append(md_table(data["node_types"], [
        ("model", "model"), ("scaffold", "scaffold"), ("hints", "hints"), ("runs", "runs"), ("nodes", "nodes"),
        ("draft", "draft"), ("improve", "improve"), ("debug", "debug"), ("valid", "valid"),
        ("invalid", "invalid"), ("buggy", "buggy"), ("buggy_rate", "buggy rate"),
        ("draft_buggy_rate", "draft buggy"), ("improve_buggy_rate", "improve buggy"),
        ("debug_buggy_rate", "debug buggy"), ("improve_beat_parent_rate", "improve beat parent"),
        ("debug_beat_parent_rate", "debug beat parent")]))
    L.append("## Cost\n")
    L.append("From summary.json (every model call, including those of discarded nodes). *per FSR point*: "
             "spend of the cell's scored ladder runs divided by the sum of their FSR ([0, 3] rule).\n")
    L.append(md_table(data["cost"], [
        ("model", "model"), ("scaffold", "scaffold"), ("hints", "hints"), ("runs", "runs"),
        ("llm_calls", "calls"), ("tokens_in", "tokens in"), ("tokens_out", "tokens out"), ("usd", "USD"),
        ("usd_per_run", "USD / run"), ("tokens_per_run", "tokens / run"), ("fsr_points", "FSR points"),
        ("usd_per_fsr_point", "USD / FSR point"), ("tokens_per_fsr_point", "tokens / FSR point")], nd=4))
    if data["judge"]:
        L.append("## Similarity judge\n")
        L.append("An LLM judged which of the reference record's key changes a node reproduced (credit 1 yes, "
                 "0.5 partly, 0 no; a node's score is the mean over changes). *best node*: mean over runs "
                 "of the score of each run's best node; *max node*: of the best-scoring judged node.\n")
        rows = []
        for r in data["judge"]:
            r = dict(r)
            r["changes_s"] = "; ".join(f"{k}: {fmt(v, 2)}" for k, v in r["changes"].items())
            rows.append(r)
        L.append(md_table(rows, [("task", "task"), ("model", "model"), ("scaffold", "scaffold"),
                                 ("hints", "hints"), ("runs", "runs"), ("best_node_score", "best node"),
                                 ("max_node_score", "max node"), ("changes_s", "key changes reproduced")]))
    if data.get("repro"):
        L.append("## Reproduction distance\n")
        L.append("Which part of the next record's change a run's best node reproduced (scoring/repro.py): the "
                 "node's diff and the record's diff against the same starting code, compared line by line "
                 "after normalisation (comments, blank lines and whitespace ignored; simple renames undone). "
                 "*recall*: the record's changed lines the node also changed; *precision*: the node's changed "
                 "lines that are the record's; *hunk recall*: the record's hunks at least half reproduced; "
                 "*max recall*: the best line recall of any node of the run. Means over runs.\n")
        L.append(md_table(data["repro"], [
            ("task", "task"), ("model", "model"), ("scaffold", "scaffold"), ("hints", "hints"), ("runs", "runs"),
            ("line_recall", "line recall"), ("line_precision", "line precision"), ("hunk_recall", "hunk recall"),
            ("max_line_recall", "max recall")]
            + ([("embed_similarity_next", "embedding sim. to next")]
               if any(r.get("embed_similarity_next") is not None for r in data["repro"]) else [])))
        L.append("Per model (tasks with equal weight):\n")
        L.append(md_table(data["repro_by_model"], [
            ("model", "model"), ("tasks", "tasks"), ("runs", "runs"), ("line_recall", "line recall"),
            ("line_precision", "line precision"), ("hunk_recall", "hunk recall"), ("max_line_recall", "max recall")]))
    L.append("## Runs\n")
    rows = data["runs"]
    if len(rows) > MAX_RUN_ROWS_MD:
        L.append(f"{len(rows)} runs: the first {MAX_RUN_ROWS_MD} are shown; all are in `runs.csv`.\n")
    L.append(md_table(rows[:MAX_RUN_ROWS_MD], [
        ("task", "task"), ("model", "model"), ("scaffold", "scaffold"), ("hints", "hints"), ("seed", "seed"),
        ("status", "status"), ("stop_reason", "stop"), ("kind", "score"), ("score", "value"), ("best_node", "best"),
        ("n_nodes", "nodes"), ("n_valid", "valid"), ("n_buggy", "buggy"), ("usd", "USD"), ("path", "folder")]))
    notes = [r for r in rows if r.get("fsr_note")]
    if notes:
        L.append("Runs without an FSR:\n")
        L += [f"- `{r['path']}`: {r['fsr_note']}" for r in notes[:50]]
        L.append("")
    if plots:
        L.append("## Plots\n")
        L += [f"![{p.stem}]({p.name})\n" for p in plots]
    return "\n".join(L).rstrip() + "\n"


def build_report(paths: Iterable[str | Path], n_boot: int = 2000, seed: int = 0) -> tuple[list[RunRec], dict]:
    runs = load_runs(paths)
    return runs, aggregate(runs, n_boot=n_boot, seed=seed)


def write_report(paths: Sequence[str | Path], out: Path, plots: bool = True, n_boot: int = 2000,
                 seed: int = 0, plot_workers: int = 1) -> Path:
    """Aggregate the runs found at or below ``paths`` into ``out``/: report.md, report.json, one CSV per
    table and PNG plots. Returns the path of report.md."""
    from speedrunner.report.plots import PlotWorkers

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    workers = PlotWorkers(plot_workers if plots else 0)
    try:
        runs, data = build_report(paths, n_boot=n_boot, seed=seed)
        made = workers.run(data, out) if plots else []
    finally:
        workers.close()
    for name in ("runs", "per_task", "cells", "iqm_by_scaffold", "node_types", "cost", "judge", "repro"):
        if name not in ("judge", "repro") or data[name]:
            write_csv(out / f"{name}.csv", data[name])
    inputs = [str(p) for p in paths]
    doc = {"schema": 1, "generated": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "inputs": inputs,
           "n_runs": len(runs), "n_nodes": agent_nodes(runs), "bootstrap": {"n": n_boot, "seed": seed},
           "notes": {"fsr": PAPER_NOTE, "speedup": SPEEDUP_NOTE}, **data, "plots": [p.name for p in made]}
    (out / "report.json").write_text(json.dumps(doc, indent=1, default=str) + "\n", encoding="utf-8")
    md = out / "report.md"
    md.write_text(render_markdown(data, runs, inputs, made), encoding="utf-8")
    return md
