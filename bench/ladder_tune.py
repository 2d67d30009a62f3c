"""Tune the nanogpt_mini ladder: run a record with a patched step count / hyperparameters, log the result.

    python bench/ladder_tune.py RECORD STEPS [STEPS ...] [--size full] [--set lr=0.01 ...] [--tag note]

The record's file is copied to a temporary file with ``SIZES[size]["steps"]`` (and any ``--set name=value``
of the Hyperparameters dataclass or of the size table) replaced, then run with SPEEDRUNNER_THREADS=1 under
``nice -n 5``. Each run appends one JSON line to bench/ladder_runs.jsonl: record, size, steps, overrides,
final val loss, train time, ms/step. The records themselves are never modified.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECORDS = ROOT / "src" / "speedrunner" / "benchmarks" / "nanogpt_mini"
LOG = ROOT / "bench" / "ladder_runs.jsonl"
FINAL = re.compile(r"step:(\d+)/(\d+) val_loss:([0-9.]+) train_time:([0-9.]+)ms")


def script_path(record: int | str) -> Path:
    """A record number, or the path of a candidate script (for trying a rung before it becomes a record)."""
    if str(record).isdigit():
        return RECORDS / f"record_{record}" / "train_gpt.py"
    return Path(record)


def patched_source(record: int | str, size: str, steps: int | None, overrides: dict[str, str]) -> str:
    src = script_path(record).read_text()
    line_re = re.compile(rf'^(\s*"{size}": dict\()(.*)(\),?)$', re.M)
    m = line_re.search(src)
    assert m, f"no size line for {size}"
    body = m.group(2)
    items = dict(kv.split("=", 1) for kv in re.split(r",\s*", body) if kv)
    if steps is not None:
        items["steps"] = str(steps)
    for k, v in list(overrides.items()):
        if k in items:
            items[k] = v
            overrides.pop(k)
    new = m.group(1) + ", ".join(f"{k}={v}" for k, v in items.items()) + m.group(3)
    src = src[: m.start()] + new + src[m.end() :]
    for k, v in overrides.items():
        pat = re.compile(rf"^(    {k}: [\w\[\], ]+ = ).*$", re.M)
        src, n = pat.subn(lambda mm, v=v: mm.group(1) + v, src)
        assert n == 1, f"hyperparameter {k} not found"
    return src


def run(record, steps, size="full", overrides=None, threads=1, data_dir=None, tag="", log=True):
    overrides = dict(overrides or {})
    shown = dict(overrides)
    src = patched_source(record, size, steps, overrides)
    env = dict(os.environ)
    env["SPEEDRUNNER_SIZE"] = size
    env["SPEEDRUNNER_THREADS"] = str(threads)
    env.setdefault("SPEEDRUNNER_DATA_DIR", data_dir or "/tmp/ladder/data")
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
        f.write(src)
        path = f.name
    t0 = time.time()
    proc = subprocess.run(["nice", "-n", "5", sys.executable, path], env=env, capture_output=True, text=True)
    wall = time.time() - t0
    os.unlink(path)
    lines = [ln for ln in proc.stdout.splitlines() if FINAL.match(ln)]
    if proc.returncode != 0 or not lines:
        print(proc.stdout[-2000:], proc.stderr[-3000:], file=sys.stderr)
        raise SystemExit(f"record {record} failed (rc={proc.returncode})")
    m = FINAL.match(lines[-1])
    total, loss, ms = int(m[2]), float(m[3]), float(m[4])
    curve = [(int(FINAL.match(ln)[1]), float(FINAL.match(ln)[3])) for ln in lines]
    res = dict(
        record=record,
        size=size,
        steps=total,
        overrides=shown,
        val_loss=loss,
        train_ms=round(ms),
        ms_per_step=round(ms / max(total, 1), 1),
        wall_s=round(wall, 1),
        threads=threads,
        tag=tag,
        curve=curve if len(curve) > 2 else None,
        when=time.strftime("%Y-%m-%d %H:%M:%S"),
    )
    if log:
        with open(LOG, "a") as f:
            f.write(json.dumps(res) + "\n")
    return res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("record", help="record number or path of a candidate script")
    ap.add_argument("steps", type=int, nargs="+")
    ap.add_argument("--size", default="full")
    ap.add_argument("--set", action="append", default=[], help="name=value (hyperparameter or size key)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--tag", default="")
    a = ap.parse_args()
    overrides = dict(s.split("=", 1) for s in a.set)
    for steps in a.steps:
        r = run(a.record, steps, a.size, overrides, a.threads, tag=a.tag)
        print(
            f"record {r['record']} size {r['size']} steps {r['steps']} {r['overrides']} "
            f"-> val {r['val_loss']:.4f} "
            f"train {r['train_ms'] / 1000:.1f}s ({r['ms_per_step']} ms/step) {r['tag']}",
            flush=True,
        )


if __name__ == "__main__":
    main()
