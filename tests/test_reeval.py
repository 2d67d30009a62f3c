"""Trusted re-evaluation: the harness re-runs nodes itself, and its figures are the ones that count."""

from __future__ import annotations

import json
import math

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
