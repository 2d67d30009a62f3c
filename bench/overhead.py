"""Per-node scaffold overhead: everything except model latency and the task's own run time.

A trivial task (a shell one-liner that prints its metric) and an instant scripted model, 20-node
flat and aide runs. overhead/node = (run wall time - sum of node execution times - sum of model
latencies) / nodes. Target (issue 2): <= 50 ms per node on the 2-core development machine.

    python bench/overhead.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import yaml

from speedrunner.runner import build, compose
from speedrunner.workspace.journal import read_events

TASK = """\
name: trivial
description: Print a number; smaller is better.
command: ["sh", "-c", "cat value.txt"]
timeout_s: 10
editable: ["*.txt"]
metric: {name: value, direction: minimize, kind: other}
parsers: [{pattern: '^value: (?P<value>[0-9.]+)'}]
"""


def make_task(root: Path) -> None:
    t = root / "trivial"
    (t / "template").mkdir(parents=True)
    (t / "task.yaml").write_text(TASK)
    (t / "template" / "value.txt").write_text("value: 1000\n")


def replies(n: int) -> list[str]:
    out = []
    for i in range(n):
        body = "garbage\n" if i % 4 == 1 else f"value: {1000 - 7 * i}\n"  # every 4th reply is buggy
        out.append(f"### File: value.txt\n```text\n{body}```\n")
    return out


def one(scaffold: str, tmp: Path, k: int) -> dict:
    script = tmp / "script.yaml"
    script.write_text(yaml.safe_dump({"responses": replies(40)}))
    run_dir = tmp / f"{scaffold}_{k}"
    cfg = compose([f"task_paths=[{tmp / 'tasks'}]", "task.id=trivial", f"scaffold={scaffold}", "model=scripted",
                   f"model.path={script}", "coder=wholefile", f"run_dir={run_dir}"])
    run = build(cfg, run_dir)
    t0 = time.perf_counter()
    run.run()
    wall = time.perf_counter() - t0
    events = read_events(run_dir / "journal.jsonl")
    exec_s = sum(e["wall_s"] for e in events if e["event"] == "exec_finished")
    llm_s = sum(e.get("latency_s", 0.0) for e in events if e["event"] == "llm_call")
    nodes = len(run.tree)  # the root is a node the scaffold handles too
    return {"scaffold": scaffold, "nodes": nodes, "wall_s": wall, "exec_s": exec_s, "llm_s": llm_s,
            "overhead_ms_per_node": 1000 * (wall - exec_s - llm_s) / nodes}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        make_task(tmp / "tasks")
        for scaffold in ("flat", "aide"):
            runs = [one(scaffold, tmp, k) for k in range(args.repeats)]
            per = [r["overhead_ms_per_node"] for r in runs]
            rows.append({"scaffold": scaffold, "nodes": runs[0]["nodes"], "median_ms": statistics.median(per),
                         "max_ms": max(per), "runs": runs})
            print(f"{scaffold:<6} nodes={runs[0]['nodes']:<3} overhead/node median {statistics.median(per):6.1f} ms "
                  f"(max {max(per):.1f} ms; exec {runs[0]['exec_s']:.2f} s of {runs[0]['wall_s']:.2f} s wall)")
    print(json.dumps([{k: v for k, v in r.items() if k != "runs"} for r in rows]))


if __name__ == "__main__":
    main()
