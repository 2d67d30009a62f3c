"""The ladder's calibration: the statistics of `speedrunner ladder time`, and the command end to end at
smoke size (its file, table and plot)."""

from __future__ import annotations

import json
from types import SimpleNamespace as NS

import pytest

from speedrunner.cli import main
from speedrunner.core.errors import UserError
from speedrunner.scoring.calibration import (
    calibration_path,
    drift_summary,
    find_calibration,
    record_digest,
    round_adjusted_cv,
    round_factors,
    summarize,
)
from speedrunner.scoring.fsr import fsr_for_run
from speedrunner.tasks.registry import get_task


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


def test_round_factors_tell_the_machines_drift_from_a_records_own_spread(tmp_path, capsys):
    drift = [1.06, 0.95, 1.00, 0.99]  # the machine, whole rounds slower or faster
    records = {str(i + 1): rec([base * d for d in drift], [4.3] * 4)
               for i, base in enumerate([1000.0, 500.0, 250.0])}
    records["4"] = rec([120.0, 100.0, 125.0, 101.0], [4.3] * 4)  # a record that varies by itself
    summarize(records, target=4.38)
    factors = round_factors(records)
    assert factors[0] > factors[3] > factors[1] and factors[0] / factors[1] == pytest.approx(1.06 / 0.95, rel=0.05)
    for key in ("1", "2", "3"):
        assert records[key]["cv"] > 0.03  # raw: the drift shows in every record
        assert round_adjusted_cv(records[key]["train_time_ms"], factors) < 0.015  # taken out
    assert round_adjusted_cv(records["4"]["train_time_ms"], factors) > 0.05  # its own spread stays
    assert round_factors({"1": records["1"], "2": records["2"]}) == [None] * 4  # too few records to tell
    lines = drift_summary({"records": records})
    assert lines[0].startswith("rounds ran at 1.0") and "record(s) 1:" in lines[1] and "4:" in lines[1]
    assert drift_summary({"records": {"1": records["4"]}}) == []  # one record: nothing to say about rounds
    # `ladder table` says the same of a calibration file, also an older one without the factors
    path = tmp_path / "cal.json"
    path.write_text(json.dumps({"records": records, "machine": {}}))
    assert main(["ladder", "table", "--calibration", str(path)]) == 0
    out = capsys.readouterr().out
    assert "| 4 |" in out and "rounds ran at" in out and "CV above 3 %" in out
    # a hand-written file with only the means FSR reads is a calibration too: tabled and plotted
    path.write_text(json.dumps({"records": {"1": {"mean_ms": 3000.0}, "2": {"mean_ms": 2000.0}}, "machine": {}}))
    assert main(["ladder", "table", "--calibration", str(path)]) == 0
    assert "| 2 | - | 2.00 | - | -% |" in capsys.readouterr().out
    assert main(["ladder", "plot", "--calibration", str(path), "--out", str(tmp_path / "l.png")]) == 0


@pytest.mark.parametrize("text, says", [("{bad", "not a readable calibration file"),
                                         ('{"runs": []}', "field 'records' must map record numbers"),
                                         ('{"records": {"1": {"train_time_ms": [5]}}}', "each with a 'mean_ms'"),
                                         ('{"records": {"first": {"mean_ms": 5}}}', "must map record numbers")])
def test_a_broken_calibration_file_is_named_with_the_fix(tmp_path, monkeypatch, capsys, text, says):
    path = tmp_path / "cal.json"
    path.write_text(text)
    for action in ("table", "plot"):
        assert main(["ladder", action, "--calibration", str(path), "--out", str(tmp_path / "l.png")]) == 2
        err = capsys.readouterr().err
        assert str(path) in err and says in err and "speedrunner ladder time" in err
    assert path.read_text() == text  # left as it was
    # the cache file FSR reads is checked the same way
    monkeypatch.setenv("SPEEDRUNNER_CACHE", str(tmp_path / "cache"))
    cache = calibration_path("nanogpt_mini", "smoke", 1)
    cache.parent.mkdir(parents=True)
    cache.write_text(text)
    with pytest.raises(UserError, match=says):
        find_calibration("nanogpt_mini", "smoke", 1)


def test_ladder_time_writes_a_calibration_that_fsr_finds(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SPEEDRUNNER_CACHE", str(tmp_path / "cache"))
    assert main(["ladder", "time", "--records", "1-2", "--runs", "2", "--size", "smoke"]) == 0
    cal = find_calibration("nanogpt_mini", "smoke", 1)
    assert cal is not None and cal["runs_per_record"] == 2 and cal["size"] == "smoke"
    for key in ("1", "2"):
        r = cal["records"][key]
        assert r["n"] == 2 and r["mean_ms"] > 0 and all(r["valid"]) and r["reaches_target"]
        assert all(loss < cal["target_val_loss"] for loss in r["val_loss"])
        assert r["script_sha256"] == record_digest("nanogpt_mini", int(key), ["train_gpt.py"])
        assert r["cv_round_adjusted"] is None  # two records: too few to tell the machine's drift
    assert cal["round_factors"] == [None, None]
    out = capsys.readouterr().out
    assert "run 2/2 record 2" in out and "| 2 |" in out and "calibration written to" in out
    assert main(["ladder", "plot", "--size", "smoke", "--out", str(tmp_path / "l.png")]) == 0
    assert (tmp_path / "l.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["ladder", "table", "--size", "smoke", "--threads", "2"]) == 2  # no calibration for 2 threads
    assert "no calibration at" in capsys.readouterr().err
    json.dumps(cal)  # plain JSON


def test_fsr_uses_a_calibration_only_for_the_scripts_it_timed(tmp_path, monkeypatch):
    """A calibration names the SHA-256 of each record's script; when record R or R+1 has changed since,
    FSR does not take its times (it measures on the fly, or says why it cannot)."""
    monkeypatch.setenv("SPEEDRUNNER_CACHE", str(tmp_path / "cache"))
    task = get_task("nanogpt_mini/record_1", "smoke")
    digests = {r: record_digest("nanogpt_mini", r, task.template_include) for r in (1, 2)}
    assert digests[1] != digests[2] and len(digests[1]) == 64

    def calibrate(**record_2):
        path = calibration_path("nanogpt_mini", "smoke", 1)
        path.parent.mkdir(parents=True, exist_ok=True)
        recs = {"1": {"mean_ms": 3000.0, "script_sha256": digests[1]}, "2": {"mean_ms": 2000.0, **record_2}}
        path.write_text(json.dumps({"schema": 1, "suite": "nanogpt_mini", "size": "smoke", "records": recs}))

    def fsr(name):
        agent = NS(id=1, outcome=NS(metric=2500.0, valid=True))
        root = NS(id=0, outcome=NS(metric=3100.0, valid=False))  # no on-the-fly fallback in this test
        (tmp_path / name).mkdir()
        return fsr_for_run(NS(task=task, best_node=lambda: agent, extra_summary={}, run_dir=str(tmp_path / name),
                              executor=NS(threads=1), tree={0: root, 1: agent}, journal=None))

    calibrate(script_sha256=digests[2])
    out = fsr("verified")
    assert out["fsr_source"] == "calibration" and out["scripts_verified"] is True
    assert (out["t_R"], out["t_next"], out["fsr"]) == (3000.0, 2000.0, 0.5)

    calibrate(script_sha256="0" * 64)  # record 2 was edited after it was timed
    out = fsr("stale")
    assert out["fsr"] is None and "another version of record(s) [2]" in out["fsr_note"]

    calibrate()  # a file from before digests: used, and marked unverified
    out = fsr("legacy")
    assert out["fsr"] == 0.5 and out["scripts_verified"] is False


def test_an_interrupted_calibration_resumes_where_it_stopped(tmp_path, monkeypatch, capsys):
    """`ladder time` keeps its runs in OUT.partial.json as it goes (never at OUT, where FSR would take an
    unfinished calibration); --resume makes only the missing runs."""
    from speedrunner.scoring.calibration import partial_path

    monkeypatch.setenv("SPEEDRUNNER_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "cal.json"
    partial = partial_path(out)
    assert partial == tmp_path / "cal.partial.json"
    import speedrunner.scoring.calibration as cal

    real, made = cal.run_record_once, []

    def dies_on_the_third(*a, **kw):
        if len(made) == 2:
            raise KeyboardInterrupt  # the user's ctrl-C, or a crash, in run 2 of record 1
        made.append(kw["extra_env"]["SPEEDRUNNER_SEED"])
        return real(*a, **kw)

    monkeypatch.setattr(cal, "run_record_once", dies_on_the_third)
    args = ["ladder", "time", "--records", "1-2", "--runs", "2", "--size", "smoke", "--out", str(out)]
    assert main(args) == 130
    assert "with --resume continues the calibration" in capsys.readouterr().err
    assert not out.exists() and find_calibration("nanogpt_mini", "smoke", 1) is None
    saved = json.loads(partial.read_text())
    assert [len(saved["records"][r]["train_time_ms"]) for r in ("1", "2")] == [1, 1]

    made.clear()
    monkeypatch.setattr(cal, "run_record_once", lambda *a, **kw: made.append(kw["extra_env"]["SPEEDRUNNER_SEED"]) or real(*a, **kw))
    assert main([*args, "--resume"]) == 0
    assert made == ["1338", "1338"]  # round 2 only, with round 2's seed
    done = json.loads(out.read_text())
    for r in ("1", "2"):
        assert done["records"][r]["n"] == 2 and done["records"][r]["train_time_ms"][0] == saved["records"][r]["train_time_ms"][0]
    assert not partial.exists() and "resuming" in capsys.readouterr().out

    # a partial file of other settings is refused, not mixed in
    partial.write_text(json.dumps({**saved, "runs_per_record": 5}))
    assert main([*args, "--resume"]) == 2
    assert "cannot be continued: its runs_per_record is 5" in capsys.readouterr().err
