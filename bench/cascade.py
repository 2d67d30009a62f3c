"""The oracle climbs the whole nanogpt_mini ladder on its own code: a cascade (docs/CASCADES.md) whose every
step starts from the previous step's best node. With the oracle each step's best is the next record's
script, so the chain's cumulative speedup should follow the reference ladder measured on this machine.
At demo size several rungs are no speedup (1->2 and 9->10 train the same steps, 3->4 and 5->6 one step
more), so this script runs with require_faster=false by default: with the cascade's default stop rule the
oracle's chain would stop at the first such rung.

    python bench/cascade.py [--size demo] [--records 1-10] [--max-nodes 1] [--reeval-runs 1]
                            [--model oracle] [--beyond 0] [--cpus 1] [--out DIR]

At demo size this takes about 30 minutes on one core (each of the 9 steps trains its root, one agent node,
one re-evaluation run and, without a calibration, the next record once for FSR). Re-running the same
command resumes the cascade. Prints, per step, the agent's speedup over record 1 beside the reference
ladder's (the calibration file of this machine if there is one, else the times the steps measured), and
writes cascade.json and cascade.png into the cascade folder.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", default="demo")
    ap.add_argument("--records", default="1-10")
    ap.add_argument("--model", default="oracle")
    ap.add_argument("--max-nodes", type=int, default=1)
    ap.add_argument("--reeval-runs", type=int, default=1)
    ap.add_argument("--beyond", type=int, default=0)
    ap.add_argument("--require-faster", default="false",
                    help="true: the cascade's default stop rule (stop at the first step not faster than its root); "
                         "false (default here): go on while a step has a valid node, since several demo rungs "
                         "are no speedup (1->2, 3->4, 5->6: bench/LADDER_NOTES.md)")
    ap.add_argument("--cpus", default=None, help="pin node runs to these cores, e.g. 1")
    ap.add_argument("--out", default=None, help="cascade folder (default bench/runs/cascade_<model>_<size>_<records>)")
    args = ap.parse_args()
    out = Path(args.out or f"bench/runs/cascade_{args.model}_{args.size}_{args.records}")
    cmd = [sys.executable, "-m", "speedrunner", "cascade", "suite=nanogpt_mini", f"records={args.records}",
           f"model={args.model}", f"task.size={args.size}", "scaffold=tree", f"budget.max_nodes={args.max_nodes}",
           f"reeval.runs={args.reeval_runs}", f"beyond={args.beyond}", f"require_faster={args.require_faster}",
           f"run_dir={out}"]
    if args.cpus:
        cmd.append(f"executor.cpus=[{args.cpus}]")
    t0 = time.time()
    p = subprocess.run(cmd)
    wall = time.time() - t0
    path = out / "cascade.json"
    if not path.is_file():
        print(f"no cascade.json in {out} (exit {p.returncode})")
        return 1
    doc = json.loads(path.read_text())
    ladder = doc.get("reference_ladder") or {}
    print(f"\ncascade {doc['suite']} records {doc['first_record']}-{doc['last_record']}, size {args.size}, "
          f"model {args.model}; reference ladder: {ladder.get('source')} (machine {ladder.get('fingerprint')}); "
          f"{wall / 60:.1f} min this session")
    print("| step | record -> | best | time (ms) | source | speedup over record 1 | reference ladder | ratio | "
          "line recall | stopped |")
    print("|---|---|---|---|---|---|---|---|---|---|")

    def f(x, fmt=".3f"):
        return "-" if x is None else format(x, fmt)

    def x(v):
        return "-" if v is None else f"{v:.3f}x"

    for s in doc["steps"]:
        agent, ref = s.get("speedup_over_first"), s.get("speedup_over_first_record_ref")
        ratio = agent / ref if agent and ref else None
        print(f"| {s['step']} | {s['record']} -> {s['target_record'] or '+'} | v_{s['best_node']} | "
              f"{f(s['metric'], '.0f')} | {s['metric_source'] or '-'} | {x(agent)} | {x(ref)} | {f(ratio, '.2f')} | "
              f"{f((s.get('repro') or {}).get('line_recall'), '.2f')} | {s['stopped_because'] or ''} |")
    print(f"\nstopped because: {doc['stopped_because']} (step {doc['stopped_at_step']}); record reached: "
          f"{doc['record_reached']}; broke down: {doc['broke_down']}; plot: {out / (doc.get('plot') or '-')}")
    return 0 if p.returncode == 0 else p.returncode


if __name__ == "__main__":
    sys.exit(main())
