"""Parallel search: how much of the workers' time is spent running nodes (issue 10).

A tiny task in a temporary folder whose command sleeps a fixed time and prints its metric
(``python -c "import time; time.sleep(2); print('metric: 1')"``), an instant model whose every reply
is a different notes.txt (so every node is a change and is run), and K workers. The figure of merit:

    utilisation = sum of node run wall times (exec_finished.wall_s, v_0 included) / (K x run wall time)

over the whole run (``run.run()``, v_0 alone at the start included), and over the search phase alone
(from v_0's end to the last node's end, agent nodes only). Goal (issue 10): >= 90 % with K = 4.

    python bench/parallel.py [--workers 4] [--nodes 40] [--sleep 2] [--scaffolds aide flat]
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import platform
import tempfile
import threading
import time
from pathlib import Path

from speedrunner.core.types import Completion, Usage
from speedrunner.runner import build, compose
from speedrunner.workspace.journal import read_events

TASK = """\
name: sleeper
description: Sleeps, then prints a constant metric.
command: ["{{python}}", "-c", "import time; time.sleep({sleep}); print('metric: 1')"]
timeout_s: 60
editable: ["notes.txt"]
metric: {{name: metric, direction: minimize, kind: other}}
parsers: [{{pattern: '^metric: (?P<metric>[0-9.]+)'}}]
"""


class InstantModel:
    """Answers at once with a new notes.txt each time (thread-safe)."""

    name = "instant"

    def __init__(self) -> None:
        self._n = itertools.count(1)
        self._lock = threading.Lock()

    def complete(self, messages):
        with self._lock:
            i = next(self._n)
        text = f"### File: notes.txt\n```text\nattempt {i}\n```\n"
        return Completion(text=text, usage=Usage(tokens_in=1, tokens_out=1))


def make_task(root: Path, sleep: float) -> None:
    t = root / "sleeper"
    (t / "template").mkdir(parents=True)
    (t / "task.yaml").write_text(TASK.format(sleep=sleep))
    (t / "template" / "notes.txt").write_text("attempt 0\n")


def one(tmp: Path, scaffold: str, workers: int, nodes: int) -> dict:
    run_dir = tmp / f"{scaffold}_k{workers}"
    cfg = compose([f"task_paths=[{tmp / 'tasks'}]", "task.id=sleeper", f"scaffold={scaffold}", "model=null",
                   "coder=wholefile", "reeval.runs=0", f"budget.max_nodes={nodes}", f"executor.workers={workers}",
                   f"run_dir={run_dir}"])
    run = build(cfg, run_dir)
    model = InstantModel()
    run.models = {role: model for role in run.models}
    t0 = time.time()
    run.run()
    wall = time.time() - t0
    events = read_events(run_dir / "journal.jsonl")
    fin = {e["node"]: e for e in events if e["event"] == "exec_finished"}
    start = {e["node"]: e for e in events if e["event"] == "exec_started"}
    exec_s = sum(e["wall_s"] for e in fin.values())
    agent = [n for n in fin if n != 0]
    phase = max(fin[n]["t"] for n in agent) - fin[0]["t"]
    phase_exec = sum(fin[n]["wall_s"] for n in agent)
    # the most nodes running at once, from the journal's exec intervals
    pts = sorted([(start[n]["t"], 1) for n in fin] + [(fin[n]["t"], -1) for n in fin])
    cur = peak = 0
    for _, d in pts:
        cur += d
        peak = max(peak, cur)
    return {"scaffold": scaffold, "workers": workers, "nodes": len(fin) - 1, "wall_s": round(wall, 2),
            "exec_s": round(exec_s, 2), "utilisation": exec_s / (workers * wall),
            "search_phase_s": round(phase, 2), "search_utilisation": phase_exec / (workers * phase),
            "peak_running": peak, "pool_in_use_after": run.pool.in_use()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--nodes", type=int, default=40)
    ap.add_argument("--sleep", type=float, default=2.0)
    ap.add_argument("--scaffolds", nargs="+", default=["aide", "flat"])
    args = ap.parse_args()
    k, n, s = args.workers, args.nodes, args.sleep
    ideal = (n + 1) * s / (k * (s + math.ceil(n / k) * s))  # v_0 alone, then full rounds of k nodes
    print(f"machine: {platform.node()} {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}; "
          f"K={k}, {n} nodes of {s:g} s; ideal whole-run utilisation {ideal:.1%}")
    rows = []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        make_task(tmp / "tasks", s)
        for scaffold in args.scaffolds:
            r = one(tmp, scaffold, k, n)
            rows.append(r)
            print(f"{scaffold:<5} K={k} nodes={r['nodes']} wall {r['wall_s']:.2f} s, node run time {r['exec_s']:.2f} s: "
                  f"utilisation {r['utilisation']:.1%} (search phase {r['search_utilisation']:.1%} over "
                  f"{r['search_phase_s']:.2f} s), peak {r['peak_running']} running, pool after {r['pool_in_use_after']}")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
