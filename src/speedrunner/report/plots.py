"""PNG figures of a report. Uses matplotlib's object API with the Agg canvas (no pyplot, no global
backend switch, no display needed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from speedrunner.report.aggregate import OPERATORS, task_sort_key

SCORE_NAME = {"fsr": "FSR", "speedup": "speedup"}
DPI = 90


def _figure(w: float, h: float, ncols: int = 1):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), dpi=DPI)
    FigureCanvasAgg(fig)
    axes = [fig.add_subplot(1, ncols, i + 1) for i in range(ncols)]
    return fig, axes


def _save(fig, path: Path, bottom: float = 0.12, wspace: float = 0.25, right: float = 0.98) -> Path:
    # Fixed margins instead of tight_layout, which draws the figure twice (the report has a time budget).
    fig.subplots_adjust(left=0.08, right=right, top=0.92, bottom=bottom, wspace=wspace)
    fig.savefig(path, dpi=DPI)
    return path


def _bottom(labels: list[str], height_in: float, rotation: float = 60, fontsize: float = 8) -> float:
    """Bottom margin (figure fraction) that fits rotated tick labels."""
    import math

    longest = max((len(x) for x in labels), default=0)
    need = 0.35 + longest * fontsize * 0.55 / 72 * math.sin(math.radians(rotation))
    return min(0.7, need / height_in)


def _bars(ax, pos: list[float], lengths: list[float], *, start: list[float] | None = None, width: float = 0.8,
          color: str, label: str | None = None, horizontal: bool = False) -> None:
    """Bars as one PolyCollection: one artist instead of one Rectangle per bar (much faster to build)."""
    from matplotlib.collections import PolyCollection

    start = start or [0.0] * len(pos)
    verts = []
    for p, v, s0 in zip(pos, lengths, start, strict=True):
        a, b = p - width / 2, p + width / 2
        if horizontal:
            verts.append([(s0, a), (s0 + v, a), (s0 + v, b), (s0, b)])
        else:
            verts.append([(a, s0), (b, s0), (b, s0 + v), (a, s0 + v)])
    col = PolyCollection(verts, facecolors=color, edgecolors="none", label=label)
    ax.add_collection(col, autolim=True)
    ax.autoscale_view()


def cell_label(row: dict[str, Any]) -> str:
    return f"{row['model']} · {row['scaffold']} · {row['hints']}"


def plot_cells(cells: list[dict[str, Any]], kind: str, path: Path) -> Path | None:
    rows = [c for c in cells if c["kind"] == kind and c["mean"] is not None]
    if not rows:
        return None
    n = len(rows)
    fig, (ax,) = _figure(max(6.0, 0.45 * n + 2), 4.6)
    xs = list(range(n))
    means = [r["mean"] for r in rows]
    _bars(ax, xs, means, color="#4c78a8", label="all-runs mean ± SEM")
    ax.errorbar(xs, means, yerr=[r["sem"] or 0 for r in rows], fmt="none", ecolor="black", capsize=3, lw=1)
    ax.scatter(xs, [r["top3_mean"] for r in rows], marker="D", color="#e45756", zorder=3,
               label="top-3-of-runs mean (paper)")
    ax.set_xticks(xs)
    ax.set_xticklabels([cell_label(r) for r in rows], rotation=60, ha="right", fontsize=8)
    ax.set_ylim(bottom=min(0.0, min(means)))
    ax.set_ylabel(f"mean {SCORE_NAME[kind]} over tasks")
    ax.set_title(f"{SCORE_NAME[kind]} by model · scaffold · hints")
    if kind == "speedup":
        ax.axhline(1.0, color="grey", lw=0.8, ls="--")
    ax.legend(fontsize=8, loc="upper left")
    return _save(fig, path, bottom=_bottom([cell_label(r) for r in rows], 4.6))


def plot_iqm(iqm_rows: list[dict[str, Any]], kind: str, path: Path) -> Path | None:
    rows = [r for r in iqm_rows if r["kind"] == kind and r["iqm"] is not None]
    if not rows:
        return None
    regimes = list(dict.fromkeys(r["hints"] for r in rows))
    scaffolds = list(dict.fromkeys(r["scaffold"] for r in rows))
    fig, (ax,) = _figure(max(5.0, 1.1 * len(scaffolds) + 2), 4.0)
    width = 0.8 / len(regimes)
    for i, h in enumerate(regimes):
        sub = {r["scaffold"]: r for r in rows if r["hints"] == h}
        xs, ys, lo, hi = [], [], [], []
        for j, s in enumerate(scaffolds):
            if s in sub:
                r = sub[s]
                xs.append(j - 0.4 + width * (i + 0.5))
                ys.append(r["iqm"])
                lo.append(r["iqm"] - (r["ci_low"] if r["ci_low"] is not None else r["iqm"]))
                hi.append((r["ci_high"] if r["ci_high"] is not None else r["iqm"]) - r["iqm"])
        ax.errorbar(xs, ys, yerr=[lo, hi], fmt="o", capsize=4, label=f"hints {h}")
    ax.set_xticks(list(range(len(scaffolds))))
    ax.set_xticklabels(scaffolds)
    ax.set_ylabel(f"IQM {SCORE_NAME[kind]} (95% bootstrap CI)")
    ax.set_title(f"IQM of {SCORE_NAME[kind]} by scaffold")
    ax.legend(fontsize=8, loc="upper left")
    return _save(fig, path)


def plot_per_task(per_task: list[dict[str, Any]], kind: str, path: Path, max_lines: int = 16) -> Path | None:
    rows = [r for r in per_task if r["kind"] == kind and r["mean"] is not None]
    if not rows:
        return None
    tasks = sorted({r["task"] for r in rows}, key=task_sort_key)
    cells: dict[str, dict[str, float]] = {}
    for r in rows:
        cells.setdefault(cell_label(r), {})[r["task"]] = r["mean"]
    fig, (ax,) = _figure(max(8.0, 0.5 * len(tasks) + 5), 4.4)
    ranked = sorted(cells.items(), key=lambda kv: -sum(kv[1].values()) / len(kv[1]))[:max_lines]
    for k, (label, vals) in enumerate(ranked):
        xs = [i for i, t in enumerate(tasks) if t in vals]
        ax.plot(xs, [vals[tasks[i]] for i in xs], marker="os^D"[k // 10 % 4], ms=3, lw=1,
                ls="-" if k < 10 else "--", label=label)  # the colour cycle has 10 colours
    prefix = os.path.commonprefix(tasks)
    prefix = prefix[:prefix.rfind("/") + 1]  # "nanogpt_mini/": said once, in the axis label
    short = [t[len(prefix):] for t in tasks]
    ax.set_xticks(list(range(len(tasks))))
    ax.set_xticklabels(short, rotation=45, ha="right", fontsize=8)
    ax.set_xlabel(f"task ({prefix}...)" if prefix else "task")
    ax.set_ylabel(f"{SCORE_NAME[kind]} (all-runs mean)")
    more = f" (top {max_lines} of {len(cells)} cells)" if len(cells) > max_lines else ""
    ax.set_title(f"{SCORE_NAME[kind]} per task{more}")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return _save(fig, path, bottom=_bottom(short, 4.4, rotation=45) + 0.06, right=0.68)


def plot_nodes(node_rows: list[dict[str, Any]], path: Path) -> Path | None:
    """Horizontal bars, cells down the side (labelled once: the right panel shares the axis)."""
    rows = [r for r in node_rows if r["nodes"]][::-1]
    if not rows:
        return None
    n = len(rows)
    labels = [cell_label(r) for r in rows]
    h = max(3.0, 0.28 * n + 1.2)
    fig, (a1, a2) = _figure(10.0, h, ncols=2)
    a2.sharey(a1)
    ys = list(range(n))
    colors = {"draft": "#4c78a8", "improve": "#54a24b", "debug": "#f58518"}
    left = [0.0] * n
    for op in OPERATORS:
        v = [r[op] / r["runs"] for r in rows]
        _bars(a1, ys, v, start=left, color=colors[op], label=op, horizontal=True)
        left = [b + x for b, x in zip(left, v, strict=True)]
    a1.set_xlim(0, max(left) * 1.3 if max(left) > 0 else 1)  # room on the right for the legend
    a1.set_xlabel("nodes per run")
    a1.set_title("node types")
    w = 0.8 / len(OPERATORS)
    for i, op in enumerate(OPERATORS):
        v = [r[f"{op}_buggy_rate"] if r[f"{op}_buggy_rate"] is not None else 0.0 for r in rows]
        _bars(a2, [y - 0.4 + w * (i + 0.5) for y in ys], v, width=w, color=colors[op], label=op, horizontal=True)
    a2.set_xlabel("buggy rate")
    a2.set_xlim(0, 1)
    a2.set_title("buggy rate by operator")
    a1.set_yticks(ys)
    a1.set_yticklabels(labels, fontsize=8)
    a2.tick_params(labelleft=False)
    a1.legend(fontsize=8, loc="lower right")
    longest = max(len(x) for x in labels)
    fig.subplots_adjust(left=min(0.5, (0.2 + longest * 8 * 0.55 / 72) / 10.0), right=0.98, top=1 - 0.45 / h,
                        bottom=0.55 / h, wspace=0.05)
    fig.savefig(path, dpi=DPI)
    return path


def plot_cost(cost_rows: list[dict[str, Any]], cells: list[dict[str, Any]], path: Path) -> Path | None:
    fsr = {(c["model"], c["scaffold"], c["hints"]): c["mean"] for c in cells if c["kind"] == "fsr"}
    pts = [(c["usd_per_run"], fsr[key], c) for c in cost_rows
           if (key := (c["model"], c["scaffold"], c["hints"])) in fsr and fsr[key] is not None and c["usd_per_run"]]
    if not pts:
        return None
    fig, (ax,) = _figure(6.5, 4.5)
    models = list(dict.fromkeys(c["model"] for _, _, c in pts))
    for m in models:
        mine = [(x, y) for x, y, c in pts if c["model"] == m]
        ax.scatter([x for x, _ in mine], [y for _, y in mine], label=m, s=18)
    if len(pts) <= 12:
        for x, y, c in pts:
            ax.annotate(f"{c['scaffold']} · {c['hints']}", (x, y), fontsize=6, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("USD per run")
    ax.set_ylabel("mean FSR (all runs)")
    ax.set_title("cost against FSR, per model · scaffold · hints")
    ax.legend(fontsize=7, loc="best" if len(pts) < 50 else "upper left")
    return _save(fig, path)



def plot_cascade(doc: dict[str, Any], path: Path) -> Path:
    """A cascade (cascade.json): the agent's cumulative speedup over the first record after each step,
    beside the reference ladder timed on the same machine, with the step where the chain broke down."""
    fig, (ax,) = _figure(7.5, 4.4)
    first, last = int(doc["first_record"]), int(doc["last_record"])
    ref = doc.get("reference_ladder") or {}
    rs = sorted((int(k), v) for k, v in (ref.get("speedup_over_first") or {}).items() if v)
    if rs:
        ax.plot([r for r, _ in rs], [v for _, v in rs], "s--", color="#888888", lw=1.2,
                label=f"reference ladder ({'calibration' if ref.get('source') == 'calibration' else 'measured by the steps'})")
    xs, ys, labels = [float(first)], [1.0], [f"record {first}"]
    stop = None
    for s in doc.get("steps", []):
        x = float(s["target_record"]) if s["mode"] == "ladder" else float(last + _beyond_index(doc, s))
        ok = s["best_node"] is not None and s["stopped_because"] in (None, "last_record", "beyond_done")
        if ok and s.get("speedup_over_first"):
            xs.append(x)
            ys.append(float(s["speedup_over_first"]))
            labels.append(f"step {s['step']}")
        elif s["stopped_because"]:
            stop = (x, s)
    ax.plot(xs, ys, "o-", color="#e45756", lw=1.8, label=f"agent chain ({doc['config'].get('suite')})")
    if stop is not None and doc.get("broke_down"):
        x, s = stop
        tried = s.get("speedup_over_first")
        y = float(tried) if tried else ys[-1]
        if tried:  # the step's best attempt, which did not count
            ax.plot([xs[-1], x], [ys[-1], y], ":", color="#e45756", lw=1.2)
            ax.scatter([x], [y], s=40, facecolors="none", edgecolors="#e45756", zorder=3)
        ax.scatter([x], [y], marker="X", s=90, color="black", zorder=4,
                   label=f"broke down at step {s['step']}: {s['stopped_because']}")
        ax.annotate(f"step {s['step']}: {s['stopped_because']}", (x, y), textcoords="offset points",
                    xytext=(-8, 8), ha="right", fontsize=8)
    claim = doc.get("claim") or {}
    if claim.get("made"):
        verdict = "beats" if claim.get("beats_last_record") else "does not significantly beat"
        p = claim.get("p_faster")
        ax.annotate(f"{verdict} record {claim.get('last_record')} (p={'-' if p is None else format(p, '.2g')})",
                    (xs[-1], ys[-1]), textcoords="offset points", xytext=(-40, 10), fontsize=8)
    if doc.get("beyond"):
        ax.axvline(last + 0.5, color="#bbbbbb", lw=0.8, ls=":")
    end = last + int(doc.get("beyond") or 0)
    ticks = sorted(set(range(first, end + 1)) | {int(x) for x in xs} | ({int(stop[0])} if stop else set()))
    ax.set_xlim(first - 0.4, max(ticks) + 0.4)
    ax.set_xticks(ticks)
    ax.set_xticklabels([str(t) if t <= last else f"+{t - last}" for t in ticks], fontsize=8)
    ax.set_xlabel("record reached (+M: steps past the last record)")
    ax.set_ylabel(f"speedup over record {first} (x)")
    m = ref.get("size") or "-"
    ax.set_title(f"cascade {doc.get('suite')} records {first}-{last}, size {m}, machine {ref.get('fingerprint')}",
                 fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.subplots_adjust(left=0.11, right=0.98, top=0.92, bottom=0.12)
    fig.savefig(Path(path), dpi=DPI)
    return Path(path)


def _beyond_index(doc: dict[str, Any], s: dict[str, Any]) -> int:
    """1 for the first step past the last record, 2 for the next, ..."""
    ladder = [t for t in doc.get("planned_steps", []) if t["mode"] == "ladder"]
    return int(s["step"]) - len(ladder)

PLOTS: dict[str, Callable[[dict[str, Any], Path], Path | None]] = {
    "fsr_cells": lambda d, out: plot_cells(d["cells"], "fsr", out / "fsr_cells.png"),
    "fsr_iqm_by_scaffold": lambda d, out: plot_iqm(d["iqm_by_scaffold"], "fsr", out / "fsr_iqm_by_scaffold.png"),
    "fsr_per_task": lambda d, out: plot_per_task(d["per_task"], "fsr", out / "fsr_per_task.png"),
    "speedup_cells": lambda d, out: plot_cells(d["cells"], "speedup", out / "speedup_cells.png"),
    "speedup_iqm_by_scaffold": lambda d, out: plot_iqm(d["iqm_by_scaffold"], "speedup",
                                                       out / "speedup_iqm_by_scaffold.png"),
    "speedup_per_task": lambda d, out: plot_per_task(d["per_task"], "speedup", out / "speedup_per_task.png"),
    "node_types": lambda d, out: plot_nodes(d["node_types"], out / "node_types.png"),
    "cost": lambda d, out: plot_cost(d["cost"], d["cells"], out / "cost.png"),
}
# Rough cost of each plot, to share them out between worker processes.
WEIGHT = {"node_types": 3, "fsr_cells": 2, "speedup_cells": 2, "fsr_per_task": 2, "speedup_per_task": 2}


def write_plots(data: dict[str, Any], out: Path, names: list[str] | None = None) -> list[Path]:
    """Make the named plots (default: all that have data) in this process; returns the files written."""
    made = []
    for name in names if names is not None else list(PLOTS):
        p = PLOTS[name](data, Path(out))
        if p:
            made.append(p)
    return made


class PlotWorkers:
    """Plots in worker processes (one by default), started before the run folders are read so that importing matplotlib
    (about a second) overlaps the reading; then each worker draws its share of the plots.

    Falls back to plotting in this process if a worker cannot be started or fails."""

    def __init__(self, n: int = 1):
        self.procs: list[subprocess.Popen] = []
        env = dict(os.environ, MPLBACKEND="Agg")
        for _ in range(max(0, n)):
            try:
                # stderr to a file, not a pipe: a chatty worker must not block on a full pipe
                self.procs.append(subprocess.Popen(
                    [sys.executable, "-m", "speedrunner.report.plots"], stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE, stderr=tempfile.TemporaryFile(), env=env))
            except OSError:
                break

    def run(self, data: dict[str, Any], out: Path, timeout: float = 120) -> list[Path]:
        names = [n for n in PLOTS]
        if not self.procs:
            return write_plots(data, out, names)
        shares: list[list[str]] = [[] for _ in self.procs]
        loads = [0] * len(self.procs)
        for name in sorted(names, key=lambda n: -WEIGHT.get(n, 1)):
            i = loads.index(min(loads))
            shares[i].append(name)
            loads[i] += WEIGHT.get(name, 1)
        payload = {"out": str(out), "data": data}
        made: list[Path] = []
        failed: list[str] = []
        sent = []
        for proc, share in zip(self.procs, shares, strict=True):
            try:
                assert proc.stdin is not None
                proc.stdin.write(json.dumps({**payload, "names": share}, default=str).encode())
                proc.stdin.close()
                sent.append(True)
            except (OSError, ValueError):
                sent.append(False)
        for proc, share, ok in zip(self.procs, shares, sent, strict=True):
            try:
                if not ok:
                    raise RuntimeError("could not send the data")
                assert proc.stdout is not None
                stdout = proc.stdout.read()  # the worker's stderr is small (a traceback at most)
                proc.wait(timeout=timeout)
                if proc.returncode != 0:
                    raise RuntimeError(f"plot worker exited {proc.returncode}")
                made += [Path(p) for p in json.loads(stdout.decode() or "[]")]
            except (RuntimeError, ValueError, subprocess.TimeoutExpired):
                proc.kill()
                proc.wait()
                failed += share
        if failed:
            made += write_plots(data, out, failed)
        order = list(PLOTS)
        return sorted(set(made), key=lambda p: order.index(p.stem) if p.stem in order else len(order))

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def _worker() -> int:
    _figure(1, 1)  # import matplotlib and load fonts while the parent reads the runs
    req = json.loads(sys.stdin.buffer.read() or b"null")
    if not req:
        return 0
    made = write_plots(req["data"], Path(req["out"]), req["names"])
    sys.stdout.write(json.dumps([str(p) for p in made]))
    return 0


if __name__ == "__main__":
    sys.exit(_worker())
