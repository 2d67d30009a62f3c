"""Every nanogpt_mini record trains at smoke size in seconds, its loss falls and its log parses."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

import speedrunner
from speedrunner.data import nanogpt_mini

LADDER = Path(speedrunner.__file__).parent / "benchmarks" / "nanogpt_mini"
FINAL = re.compile(r"step:(\d+)/(\d+) val_loss:([0-9.]+) train_time:([0-9.]+)ms")
TRAIN = re.compile(r"^step:(\d+)/(\d+) train_time:([0-9.]+)ms step_avg:([0-9.]+|nan)ms$")
SEP = "=" * 100


def _ladder():
    return yaml.safe_load((LADDER / "ladder.yaml").read_text())


RECORDS = [r["record"] for r in _ladder()["records"]]


def test_ladder_yaml_is_consistent():
    ladder = _ladder()
    assert set(ladder["sizes"]) == {"full", "demo", "smoke"}
    for size in ladder["sizes"].values():
        assert float(size["target_val_loss"]) > 0
    t = ladder["sizes"]
    assert t["full"]["target_val_loss"] < t["demo"]["target_val_loss"] < t["smoke"]["target_val_loss"]
    assert int(ladder["threads"]) >= 1
    assert RECORDS == list(range(1, len(RECORDS) + 1)) and len(RECORDS) >= 10
    for r in ladder["records"]:
        assert {"record", "name", "innovation", "upstream"} <= set(r)
        src = (LADDER / f"record_{r['record']}" / "train_gpt.py").read_text()
        assert "test.bin" not in src  # the test split is held out from every script
        assert "SPEEDRUNNER_DATA_DIR" in src and "SPEEDRUNNER_SIZE" in src and "SPEEDRUNNER_THREADS" in src


@pytest.fixture(scope="module")
def smoke_logs(tmp_path_factory):
    full = nanogpt_mini.prepare(out_dir=tmp_path_factory.mktemp("nm") / "data")
    data = tmp_path_factory.mktemp("nm_train_val_only")
    for name in ("train.bin", "val.bin"):  # no test.bin: a script that reads it fails here
        shutil.copy(full / name, data / name)
    env = dict(os.environ, SPEEDRUNNER_DATA_DIR=str(data), SPEEDRUNNER_SIZE="smoke", SPEEDRUNNER_THREADS="1")

    def run(record):
        script = LADDER / f"record_{record}" / "train_gpt.py"
        return subprocess.run(
            [sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=240, cwd=data
        )

    with ThreadPoolExecutor(max_workers=max(1, min(2, os.cpu_count() or 1))) as pool:
        return dict(zip(RECORDS, pool.map(run, RECORDS), strict=True))


@pytest.mark.parametrize("record", RECORDS)
def test_record_smoke(smoke_logs, record):
    proc = smoke_logs[record]
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    script = (LADDER / f"record_{record}" / "train_gpt.py").read_text()
    # the log starts with the script's own source between two lines of 100 '='
    assert out.startswith(SEP + "\n" + script)
    lines = out[len(SEP) + 1 + len(script) :].splitlines()
    assert lines[0].strip() == "" or lines[0] == SEP
    lines = [ln for ln in lines if ln and ln != SEP]
    assert sum(ln.startswith("val_tokens:") for ln in lines) == 1
    val_tokens = int(next(ln for ln in lines if ln.startswith("val_tokens:")).split(":")[1])
    assert val_tokens > 0
    vals = [FINAL.match(ln) for ln in lines if FINAL.match(ln)]
    assert len(vals) >= 2
    final = FINAL.fullmatch(lines[-1].split(" step_avg:")[0]) or FINAL.match(lines[-1])
    assert final is not None, lines[-1]
    assert lines[-1].endswith("ms") and "step_avg:" in lines[-1]
    step, total, loss, ms = int(final[1]), int(final[2]), float(final[3]), float(final[4])
    assert step == total > 0 and ms > 0
    first_loss = float(vals[0][3])
    assert int(vals[0][1]) == 0 and first_loss > 7.0  # ~ln(2048) at initialisation
    assert loss < first_loss - 0.3, (first_loss, loss)
    train = [TRAIN.match(ln) for ln in lines if TRAIN.match(ln)]
    assert [int(m[1]) for m in train] == list(range(1, total + 1))
    times = [float(m[3]) for m in train]
    assert times == sorted(times) and times[-1] <= ms + 1
    smoke_target = _ladder()["sizes"]["smoke"]["target_val_loss"]
    assert loss <= smoke_target, f"record {record} smoke val loss {loss} above target {smoke_target}"
