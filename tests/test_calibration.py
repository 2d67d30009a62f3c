"""The ladder's calibration: the statistics of `speedrunner ladder time`, and the command end to end at
smoke size (its file, table and plot)."""

from __future__ import annotations

import json

import pytest

from speedrunner.cli import main
from speedrunner.scoring.calibration import find_calibration, summarize


def rec(times, losses, valid=None):
    return {"train_time_ms": list(times), "val_loss": list(losses), "valid": valid or [True] * len(times)}


def test_a_rung_is_significant_only_when_clearly_faster():
    records = {"1": rec([1000, 1010, 995], [4.37, 4.36, 4.37]),
               "2": rec([900, 905, 898], [4.37, 4.36, 4.35]),     # 10 % faster, tight: significant
               "3": rec([880, 930, 870], [4.37, 4.37, 4.36])}     # 1.5 % faster within the noise: not
    summarize(records, target=4.38)
    assert records["1"]["significant"] is None and records["1"]["speedup_vs_first"] == 1.0
    assert records["2"]["significant"] and records["2"]["p_faster_than_prev"] < 0.01
    assert not records["3"]["significant"] and records["3"]["p_faster_than_prev"] > 0.01
    assert records["2"]["speedup_vs_first"] == pytest.approx(1001.667 / 901.0, rel=1e-4)
    assert records["2"]["cv"] == pytest.approx(3.6056 / 901.0, rel=1e-3)


def test_reaching_the_target_is_every_run_valid_even_when_the_losses_spread():
    records = {"1": rec([1000, 1001, 999], [3.92, 4.37, 4.12]),   # bimodal seeds, all under 4.38
               "2": rec([500, 501, 499], [4.37, 4.39, 4.36], [True, False, True])}
    summarize(records, target=4.38)
    assert records["1"]["reaches_target"] and records["1"]["p_below_target"] > 0.01  # informative only
    assert not records["2"]["reaches_target"] and not records["2"]["all_valid"]


def test_ladder_time_writes_a_calibration_that_fsr_finds(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SPEEDRUNNER_CACHE", str(tmp_path / "cache"))
    assert main(["ladder", "time", "--records", "1-2", "--runs", "2", "--size", "smoke"]) == 0
    cal = find_calibration("nanogpt_mini", "smoke", 1)
    assert cal is not None and cal["runs_per_record"] == 2 and cal["size"] == "smoke"
    for key in ("1", "2"):
        r = cal["records"][key]
        assert r["n"] == 2 and r["mean_ms"] > 0 and all(r["valid"]) and r["reaches_target"]
        assert all(loss < cal["target_val_loss"] for loss in r["val_loss"])
    out = capsys.readouterr().out
    assert "run 2/2 record 2" in out and "| 2 |" in out and "calibration written to" in out
    assert main(["ladder", "plot", "--size", "smoke", "--out", str(tmp_path / "l.png")]) == 0
    assert (tmp_path / "l.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["ladder", "table", "--size", "smoke", "--threads", "2"]) == 2  # no calibration for 2 threads
    assert "no calibration at" in capsys.readouterr().err
    json.dumps(cal)  # plain JSON
