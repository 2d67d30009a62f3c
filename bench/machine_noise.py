"""How steady is this machine's speed? A fixed single-threaded matmul workload, timed in short slices on
one or more cores at once, for a given time. Prints, per core, the mean time of a slice (compare it
between calls: a machine can be quiet and still slow), the speed of each block (mean slice time against
the core's overall mean; 1.05 = 5 % slow) and the blocks' spread, and, for two or more cores,
the correlation of their block times (does a slow spell hit the whole machine, or one core).

A calibration's run-to-run CV cannot be lower than the spread of the machine itself over a record's
length: run this before `speedrunner ladder time` to see whether the machine is quiet enough.

    python bench/machine_noise.py --cpus 0 --seconds 60 --block 5
    python bench/machine_noise.py --cpus 0,1 --seconds 40 --block 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WORKER = r"""
import json, os, sys, time
import torch
torch.set_num_threads(1)
start, seconds, out = float(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
a, b = torch.randn(256, 256), torch.randn(256, 256)
def work(n=100):
    for _ in range(n):
        a @ b
work()
if time.time() > start:
    print(f"note: this worker was ready {time.time() - start:.1f} s after the common start (slow import); "
          "its first blocks are missing", file=sys.stderr)
while time.time() < start:
    time.sleep(0.001)
samples = []
while time.time() < start + seconds:
    t = time.perf_counter()
    work()
    samples.append((time.time() - start, time.perf_counter() - t))
json.dump(samples, open(out, "w"))
"""


def blocks(samples: list[list[float]], block_s: float) -> dict[int, float]:
    by: dict[int, list[float]] = {}
    for at, dt in samples:
        by.setdefault(int(at // block_s), []).append(dt)
    return {k: statistics.fmean(v) for k, v in by.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cpus", default="0", help="cores to measure at the same time, e.g. 0 or 0,1")
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--block", type=float, default=5.0, help="block length in seconds")
    args = ap.parse_args()
    cpus = [int(c) for c in args.cpus.split(",")]
    start = time.time() + 8.0  # time for the workers to import torch
    with tempfile.TemporaryDirectory() as tmp:
        procs, outs = [], []
        for c in cpus:
            out = Path(tmp) / f"core{c}.json"
            cmd = [sys.executable, "-c", WORKER, str(start), str(args.seconds), str(out)]
            procs.append(subprocess.Popen(["taskset", "-c", str(c), *cmd], env={**os.environ, "OMP_NUM_THREADS": "1"}))
            outs.append(out)
        for p in procs:
            p.wait()
        per_core = {c: blocks(json.loads(o.read_text()), args.block) for c, o in zip(cpus, outs, strict=True)}
    print(time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(start)), f"{args.seconds:.0f} s, {args.block:g} s blocks")
    for c, b in per_core.items():
        keys = sorted(b)[:-1] or sorted(b)  # the last block is cut short
        vals = [b[k] for k in keys]
        m = statistics.fmean(vals)
        cv = statistics.stdev(vals) / m if len(vals) > 1 else 0.0
        print(f"core {c}: {1000 * m:.1f} ms a slice, block CV {100 * cv:.1f} %, range {min(vals) / m:.3f}-{max(vals) / m:.3f}:",
              " ".join(f"{v / m:.3f}" for v in vals))
    if len(cpus) > 1:
        a, b = per_core[cpus[0]], per_core[cpus[1]]
        keys = sorted(set(a) & set(b))[:-1]
        if len(keys) > 2:
            r = statistics.correlation([a[k] for k in keys], [b[k] for k in keys])
            print(f"correlation of cores {cpus[0]} and {cpus[1]}: {r:+.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
