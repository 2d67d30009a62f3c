"""Trusted re-evaluation: the harness re-runs nodes itself, and its figures are the ones that count."""

from __future__ import annotations

import json
import math
import re

import pytest
from conftest import read_summary, run_cli, variant

from speedrunner.runner import build, compose


def _reply(code: str) -> str:
    return f"### File: solve.py\n```python\n{code}```\n"


# Behaves one way in the search and another when the harness re-runs it in reeval/v_N/run_K/.
TWO_FACED = ("import os, sys\n"
             "reeval = '/reeval/' in os.getcwd()\n"
             "{body}")
CRASH_IN_REEVAL = TWO_FACED.format(body="if reeval:\n    sys.exit('fails when re-run')\n"
                                        "print('answer: 77031 (chain length 351)')\nprint('runtime_ms: 100')\n")
SLOWER_IN_REEVAL = TWO_FACED.format(body="print('answer: 77031 (chain length 351)')\n"
                                         "print('runtime_ms: ' + ('300' if reeval else '100'))\n")


def _run(tmp_path, fixed_collatz, script_file, replies, *extra):
    run_dir = tmp_path / "run"
    cfg = compose([*fixed_collatz, "scaffold=flat", "model=scripted", f"model.path={script_file(replies)}",
                   "coder=wholefile", f"budget.max_nodes={len(replies)}", f"run_dir={run_dir}", *extra])
    build(cfg, run_dir).run()
    return run_dir, read_summary(run_dir)


def test_a_best_node_that_fails_its_reruns_gives_way_to_the_next(tmp_path, fixed_collatz, script_file):
    run_dir, s = _run(tmp_path, fixed_collatz, script_file, [_reply(CRASH_IN_REEVAL), variant(500)],
                      "reeval.runs=2")
    assert s["best_node"] == 1  # the search saw 100 ms
    r = s["reeval"]
    assert r["nodes"]["1"]["valid"] is False and "fails when re-run" in r["nodes"]["1"]["reasons"][0]
    assert r["chosen_node"] == 2 and r["nodes"]["2"]["metric_mean"] == 500
    events = [json.loads(x)["event"] for x in (run_dir / "journal.jsonl").read_text().splitlines()]
    assert events.count("reeval_finished") == 2


def test_a_node_slower_when_rerun_is_flagged(tmp_path, fixed_collatz, script_file):
    _, s = _run(tmp_path, fixed_collatz, script_file, [_reply(SLOWER_IN_REEVAL)], "reeval.runs=2")
    node = s["reeval"]["nodes"]["1"]
    assert node["valid"] and node["metric_mean"] == 300
    assert "mismatch" in node and "differs from the re-evaluated mean" in node["mismatch"]


def test_reeval_off(tmp_path, fixed_collatz, script_file):
    _, s = _run(tmp_path, fixed_collatz, script_file, [variant(500)], "reeval.runs=0")
    assert "reeval" not in s


def test_verify_prints_a_verdict_and_exits_by_validity(tmp_path):
    good = tmp_path / "good"
    good.mkdir()
    (good / "solve.py").write_text(variant(10).split("```python\n", 1)[1].rsplit("```", 1)[0])
    p = run_cli("verify", "--task", "collatz", "--runs", "2", str(good))
    assert p.returncode == 0, p.stderr
    verdict = json.loads(p.stdout)
    assert verdict["valid"] is True and verdict["runtime_ms"] == 10 and verdict["runs"] == 2
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "solve.py").write_text("print('answer: 1')\nprint('runtime_ms: 1')\n")
    p = run_cli("verify", "--task", "collatz", "--runs", "1", str(bad))
    assert p.returncode == 1
    verdict = json.loads(p.stdout)
    assert verdict["valid"] is False and "answer = 1 fails answer == 77031" in verdict["reasons"][0]


def test_harness_lm_loss_of_an_exported_model(tmp_path):
    torch = pytest.importorskip("torch")
    from speedrunner.data.shards import write_shard
    from speedrunner.scoring.lm_eval import test_loss

    vocab, seq = 16, 8
    tokens = [(3 * i) % vocab for i in range(200)]
    shard = write_shard(tmp_path / "test.bin", tokens)

    class Uniform(torch.nn.Module):
        def forward(self, idx):
            return torch.zeros(idx.shape[0], idx.shape[1], vocab)

    path = tmp_path / "model.pt"
    torch.jit.save(torch.jit.trace(Uniform(), torch.zeros(1, seq, dtype=torch.long)), str(path))
    out = test_loss(path, shard, seq_len=seq, max_tokens=100)
    assert out["test_loss"] == pytest.approx(math.log(vocab), rel=1e-6)
    assert out["test_tokens"] == (100 // seq) * seq

    class Broken(torch.nn.Module):
        def forward(self, idx):
            return torch.zeros(idx.shape[0], vocab)

    bad = tmp_path / "bad.pt"
    torch.jit.save(torch.jit.trace(Broken(), torch.zeros(1, seq, dtype=torch.long)), str(bad))
    with pytest.raises(ValueError, match=r"logits \[B, T, V\]"):
        test_loss(bad, shard, seq_len=seq, max_tokens=100)


# ------------------------------------------------------------------ drift correction against a calibration

# Prints one time when the harness re-runs it (its folder is under reeval/) and another in the search: a
# machine that has slowed down, or sped up, since the ladder was calibrated. Also prints when it ran.
def _timed(search_ms: float, reeval_ms: float) -> str:
    return ("import os, time\n"
            f"ms = {reeval_ms} if '/reeval/' in os.getcwd() else {search_ms}\n"
            "print('answer: 77031 (chain length 351)')\n"
            "print(f'runtime_ms: {ms}')\n"
            "print(f'started_ns: {time.time_ns()}')\n")


@pytest.fixture
def laddered(tmp_path, fixed_collatz, monkeypatch):
    """fixed_collatz as record 1 of a ladder ``drift_ladder`` that this machine calibrated at t_R = 1000 ms
    and t_next = 500 ms; the starting code prints ``reeval_ms`` when the harness re-runs it."""
    from speedrunner.scoring.calibration import calibration_path

    monkeypatch.setenv("SPEEDRUNNER_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "tasks" / "collatz_fixed"
    spec = root / "task.yaml"
    spec.write_text(spec.read_text() + "suite: drift_ladder\nrecord: 1\n")
    path = calibration_path("drift_ladder", None, 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"schema": 1, "suite": "drift_ladder", "fingerprint": "test",
                                "records": {"1": {"mean_ms": 1000.0}, "2": {"mean_ms": 500.0}}}))

    def starting_code(reeval_ms: float) -> list[str]:
        (root / "template" / "solve.py").write_text(_timed(1000, reeval_ms))
        return fixed_collatz

    return starting_code


def test_a_machine_slower_than_at_calibration_does_not_lower_fsr(tmp_path, laddered, script_file):
    """The machine runs 10 % slower at re-evaluation than when it was calibrated: the node (record R+1's
    speed) re-runs at 550 ms, record R beside it at 1100 ms. FSR counts the node at 500 ms, in the
    calibration's time: 1.0, where the raw re-evaluated time would give 0.9."""
    run_dir, s = _run(tmp_path, laddered(1100), script_file, [_reply(_timed(500, 550))], "reeval.runs=2")
    assert s["fsr_source"] == "calibration" and s["t_agent_source"] == "reeval_drift_corrected"
    assert s["t_agent_raw"] == 550 and s["t_R_now"] == 1100 and s["drift"] == pytest.approx(0.1)
    assert s["t_agent"] == pytest.approx(500) and s["fsr"] == pytest.approx(1.0)
    ref = s["reeval"]["nodes"]["1"]["reference"]
    assert ref["valid"] and ref["metric_mean"] == 1100
    # each re-run of the node is preceded by a run of the starting code, in its own clean folder
    started = {}
    for log in (run_dir / "reeval").rglob("stdout.log"):
        ns = [int(x.split()[1]) for x in log.read_text().splitlines() if x.startswith("started_ns:")]
        started[log.parent.relative_to(run_dir / "reeval").as_posix()] = ns[0]
    order = sorted(started, key=started.get)
    assert order == ["v_1/reference/run_0", "v_1/run_0", "v_1/reference/run_1", "v_1/run_1"]
    assert (run_dir / "reeval" / "v_1" / "reference" / "run_0" / "workspace" / "solve.py").read_text() == _timed(1000, 1100)
    events = [json.loads(x) for x in (run_dir / "journal.jsonl").read_text().splitlines()]
    assert [e["reference"] for e in events if e["event"] == "reeval_started"] == [True]
    assert [e["reference_mean"] for e in events if e["event"] == "reeval_finished"] == [1100]


def test_a_faster_machine_is_corrected_the_other_way(tmp_path, laddered, script_file):
    # 20 % faster now: the agent's 480 ms re-run is 600 ms in calibration time, FSR 0.8 (raw: 1.04)
    _, s = _run(tmp_path, laddered(800), script_file, [_reply(_timed(500, 480))], "reeval.runs=1")
    assert s["t_agent"] == pytest.approx(600) and s["fsr"] == pytest.approx(0.8) and s["drift"] == pytest.approx(-0.2)


def test_drift_beyond_max_drift_is_reported_not_corrected(tmp_path, laddered, script_file):
    _, s = _run(tmp_path, laddered(1500), script_file, [_reply(_timed(500, 550))], "reeval.runs=2")
    assert s["t_agent_source"] == "reeval" and s["t_agent"] == 550 and "t_agent_raw" not in s
    assert s["fsr"] == pytest.approx(0.9) and s["drift"] == pytest.approx(0.5)
    assert "+50.0% against the calibration" in s["drift_note"] and "reeval.max_drift=0.25" in s["drift_note"]
    # the bound is the user's to set
    _, s = _run(tmp_path / "wide", laddered(1500), script_file, [_reply(_timed(500, 550))], "reeval.runs=2",
                "reeval.max_drift=0.6")
    assert s["t_agent"] == pytest.approx(550 / 1.5) and "drift_note" not in s


def test_drift_reference_off_or_without_calibration_runs_no_reference(tmp_path, laddered, script_file, monkeypatch):
    run_dir, s = _run(tmp_path, laddered(1100), script_file, [_reply(_timed(500, 550))], "reeval.runs=2",
                      "reeval.drift_reference=false")
    assert not (run_dir / "reeval" / "v_1" / "reference").exists() and "reference" not in s["reeval"]["nodes"]["1"]
    assert s["t_agent_source"] == "reeval" and s["fsr"] == pytest.approx(0.9) and "drift" not in s
    # no calibration: FSR is measured on the fly, in this run's own time, and needs no reference runs
    monkeypatch.setenv("SPEEDRUNNER_CACHE", str(tmp_path / "empty_cache"))
    run_dir, s = _run(tmp_path / "fly", laddered(1100), script_file, [_reply(_timed(500, 550))], "reeval.runs=1")
    assert s["fsr_source"] == "on_the_fly" and not (run_dir / "reeval" / "v_1" / "reference").exists()


@pytest.mark.parametrize("override, message", [
    ("reeval.drift_reference=sometimes", "reeval.drift_reference must be true or false"),
    ("reeval.max_drift=1.5", "reeval.max_drift must be a fraction in [0, 1)"),
    ("reeval.runs=-1", "reeval.runs must be a whole number >= 0"),
])
def test_a_bad_reeval_setting_stops_before_the_search(tmp_path, fixed_collatz, override, message):
    from speedrunner.core.errors import UserError

    cfg = compose([*fixed_collatz, "model=null", f"run_dir={tmp_path / 'run'}", override])
    with pytest.raises(UserError, match=re.escape(message)):
        build(cfg, tmp_path / "run")
