"""Rough per-step cost of every record: run each for a few full-size steps, interleaved over rounds.

    python bench/ladder_time.py [--steps 12] [--rounds 2] [--records 1-10]

Prints the median ms/step per record (train_time / steps, the warm-up excluded by the scripts) and logs
every run to bench/ladder_runs.jsonl (tag "time"). On a shared machine the absolute figures are rough;
the ratios between records run back to back are more trustworthy.
"""

from __future__ import annotations

import argparse
import statistics

from ladder_tune import run


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--records", default="1-10")
    a = ap.parse_args()
    lo, hi = (int(x) for x in a.records.split("-"))
    per = {r: [] for r in range(lo, hi + 1)}
    for _ in range(a.rounds):
        for r in per:
            res = run(r, a.steps, "full", {}, tag="time")
            per[r].append(res["ms_per_step"])
            print(f"record {r}: {res['ms_per_step']} ms/step", flush=True)
    for r, v in per.items():
        print(f"record {r}: median {statistics.median(v):.1f} ms/step over {len(v)} runs {v}")


if __name__ == "__main__":
    main()
