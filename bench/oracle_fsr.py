"""The harness's bounds on the nanogpt_mini ladder: the oracle (applies record R+1's change) should
recover nearly all of each transition's speedup; the null model (no change) recovers none.

    python bench/oracle_fsr.py --model oracle --size full --records 1-9 [--cpus 1] [--out DIR]

Each task runs scaffold=tree with one agent node and --reeval-runs re-evaluation runs (default 2, as in
the config). FSR is read from each run's
summary.json (calibrated t_R/t_R+1 when this machine has a calibration, else measured on the fly; with a
calibration, re-evaluation also times record R beside the node and t_agent is drift-corrected), and
also recomputed against a calibration file given with --calibration.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="oracle")
    ap.add_argument("--size", default="full")
    ap.add_argument("--records", default="1-9")
    ap.add_argument("--cpus", default=None, help="pin node runs to these cores, e.g. 1")
    ap.add_argument("--calibration", default=None, help="a calibration JSON to recompute FSR against")
    ap.add_argument("--out", default="bench/runs")
    ap.add_argument("--reeval-runs", type=int, default=2, help="the harness's re-runs of the node (config default 2)")
    args = ap.parse_args()
    lo, _, hi = args.records.partition("-")
    records = range(int(lo), int(hi or lo) + 1)
    cal = json.loads(Path(args.calibration).read_text()) if args.calibration else None
    rows = []
    for r in records:
        run_dir = Path(args.out) / f"{args.model}_{args.size}_record_{r}_{time.strftime('%H%M%S')}"
        cmd = [sys.executable, "-m", "speedrunner", "run", f"task=nanogpt_mini/record_{r}", f"task.size={args.size}",
               f"model={args.model}", "scaffold=tree", "budget.max_nodes=1", f"reeval.runs={args.reeval_runs}", f"run_dir={run_dir}"]
        if args.cpus:
            cmd.append(f"executor.cpus=[{args.cpus}]")
        t0 = time.time()
        p = subprocess.run(cmd, capture_output=True, text=True)
        s = json.loads((run_dir / "summary.json").read_text()) if (run_dir / "summary.json").exists() else {}
        row = {"record": r, "exit": p.returncode, "wall_s": round(time.time() - t0, 1), "fsr": s.get("fsr"),
               "t_R": s.get("t_R"), "t_next": s.get("t_next"), "t_agent": s.get("t_agent"),
               "t_agent_raw": s.get("t_agent_raw"), "t_R_now": s.get("t_R_now"), "drift": s.get("drift"),
               "t_agent_source": s.get("t_agent_source"), "source": s.get("fsr_source"), "run_dir": str(run_dir)}
        if cal and s.get("t_agent") is not None:
            t_r = cal["records"][str(r)]["mean_ms"]
            t_n = cal["records"][str(r + 1)]["mean_ms"]
            # drift-corrected runs: the node's time in this file's time, from the run's own reference runs
            t_a = s["t_agent_raw"] * t_r / s["t_R_now"] if s.get("t_agent_raw") else s["t_agent"]
            row["fsr_calibrated"] = max(0.0, (t_r - t_a) / (t_r - t_n)) if t_r > t_n else None
        elif cal:
            row["fsr_calibrated"] = 0.0
        rows.append(row)
        print(json.dumps(row), flush=True)
    for key in ("fsr", "fsr_calibrated"):
        vals = [r[key] for r in rows if r.get(key) is not None]
        if vals:
            print(f"mean {key} over {len(vals)} tasks: {statistics.fmean(vals):.3f}")


if __name__ == "__main__":
    main()
