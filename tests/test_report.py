"""speedrunner.report: the paper's aggregation, the all-runs view, IQM with bootstrap CIs, node types,
cost, the files written, live progress and the similarity judge.

Synthetic run folders (speedrunner.report.synthetic) stand in for ladder runs; small scripted searches
on the fixed collatz task give real run folders for the speedup path and the progress display."""

from __future__ import annotations

import builtins
import csv
import io
import json
import math
import os
import statistics
import zlib
from pathlib import Path

import pytest
from conftest import variant
from rich.console import Console
from scipy.stats import trim_mean

from speedrunner.core.errors import UserError
from speedrunner.core.types import Completion, Usage
from speedrunner.report.aggregate import bootstrap_iqm_ci, clip_fsr, iqm, top_k_mean
from speedrunner.report.judge import judge_node, judge_run, parse_reply, scored_node
from speedrunner.report.load import find_runs, hints_label, load_runs
from speedrunner.report.progress import LiveProgress
from speedrunner.report.report import build_report, write_report
from speedrunner.report.synthetic import make_grid, make_run
from speedrunner.runner import build, compose, save_config


def set_summary(run_dir: Path, **fields) -> Path:
    p = run_dir / "summary.json"
    s = json.loads(p.read_text())
    s.update(fields)
    p.write_text(json.dumps(s))
    return run_dir


def fsr_run(root: Path, name: str, fsr, *, task="nanogpt_mini/record_1", model="m", scaffold="aide", hints=(1,),
            usd_per_call=0.01, n_nodes=4, status="finished", overrides=None) -> Path:
    d = make_run(root / name, task=task, model=model, scaffold=scaffold, hints=list(hints),
                 seed=zlib.crc32(name.encode()) % 1000, n_nodes=n_nodes, usd_per_call=usd_per_call, logs=False,
                 status=status, overrides=overrides)
    if status == "finished":
        set_summary(d, fsr=fsr, **({"fsr_note": "no calibration"} if fsr is None else {}))
    return d


def cell(data, kind="fsr", **key):
    rows = [c for c in data["cells"] if c["kind"] == kind and all(c[k] == v for k, v in key.items())]
    assert len(rows) == 1, rows
    return rows[0]


# ---------------------------------------------------------------------------------------------- rules
def test_clip_top3_iqm_helpers():
    assert [clip_fsr(v) for v in (-0.1, 0.0, 1.5, 3.0, 3.01)] == [0.0, 0.0, 1.5, 3.0, 0.0]
    assert top_k_mean([0.1, 0.9, 0.5, 0.7]) == pytest.approx((0.9 + 0.7 + 0.5) / 3)
    assert top_k_mean([0.4]) == 0.4 and top_k_mean([]) is None
    for xs in ([1.0], [3.0, 1.0], [5, 1, 4, 2, 3], list(range(17)), [0.2, 0.2, 9.0, -3.0, 0.1, 0.4, 0.5, 0.6]):
        assert iqm(xs) == pytest.approx(trim_mean(xs, 0.25))


def test_bootstrap_ci_is_seeded_and_brackets_the_iqm():
    strata = [[0.1, 0.5, 0.3, 0.9], [0.0, 0.2, 0.4], [1.2, 0.8]]
    a = bootstrap_iqm_ci(strata, n_boot=500, seed=3)
    assert a == bootstrap_iqm_ci(strata, n_boot=500, seed=3)
    assert a != bootstrap_iqm_ci(strata, n_boot=500, seed=4)
    lo, hi = a
    assert lo <= iqm(v for s in strata for v in s) <= hi
    assert bootstrap_iqm_ci([[0.5, 0.5, 0.5]], n_boot=50) == (0.5, 0.5)
    assert bootstrap_iqm_ci([]) == (None, None)


def test_hint_regime_labels():
    assert [hints_label(h) for h in ([], None, [1], [2, 1], [1, 2, 3], [0])] == \
        ["none", "none", "L1", "L1+2", "L1+2+3", "L0"]


def test_paper_top3_and_all_runs_views(tmp_path):
    t1 = [0.9, 0.5, 0.1, 3.5, -0.2]  # clipped: 0.9 0.5 0.1 0 0
    t2 = [0.2, 0.4]
    for i, v in enumerate(t1):
        fsr_run(tmp_path, f"a{i}", v, task="nanogpt_mini/record_1")
    for i, v in enumerate(t2):
        fsr_run(tmp_path, f"b{i}", v, task="nanogpt_mini/record_2")
    fsr_run(tmp_path, "nofsr", None, task="nanogpt_mini/record_2")  # FSR not computable: unscored
    fsr_run(tmp_path, "running", None, task="nanogpt_mini/record_2", status="running")  # not finished
    runs, data = build_report([tmp_path], n_boot=200)
    c = cell(data)
    c1, c2 = [0.9, 0.5, 0.1, 0.0, 0.0], [0.2, 0.4]
    assert c["tasks"] == 2 and c["runs"] == 7 and c["unscored_runs"] == 1
    assert c["top3_mean"] == pytest.approx(((0.9 + 0.5 + 0.1) / 3 + 0.3) / 2, abs=1e-4)
    assert c["mean"] == pytest.approx((statistics.mean(c1) + statistics.mean(c2)) / 2, abs=1e-4)
    assert c["raw_mean"] == pytest.approx((statistics.mean(t1) + statistics.mean(t2)) / 2, abs=1e-4)
    sem = math.sqrt(statistics.variance(c1) / 5 + statistics.variance(c2) / 2) / 2
    assert c["sem"] == pytest.approx(sem, abs=1e-4)
    assert c["iqm"] == pytest.approx(trim_mean(c1 + c2, 0.25), abs=1e-4)
    assert c["iqm_ci_low"] <= c["iqm"] <= c["iqm_ci_high"]
    per_task = {r["task"]: r for r in data["per_task"]}
    assert per_task["nanogpt_mini/record_1"]["n_clipped"] == 2
    assert per_task["nanogpt_mini/record_1"]["top3_mean"] == pytest.approx(0.5, abs=1e-4)
    assert per_task["nanogpt_mini/record_2"]["runs"] == 2
    # the unfinished run is listed but not aggregated
    assert any(r["status"] == "running" for r in data["runs"])


def test_sem_with_single_run_tasks_borrows_the_pooled_variance(tmp_path):
    for i, v in enumerate([0.2, 0.6]):
        fsr_run(tmp_path, f"a{i}", v, task="nanogpt_mini/record_1")
    fsr_run(tmp_path, "b", 0.4, task="nanogpt_mini/record_2")
    _, data = build_report([tmp_path], n_boot=50)
    pooled = statistics.variance([0.2, 0.6])
    assert cell(data)["sem"] == pytest.approx(math.sqrt(pooled / 2 + pooled / 1) / 2, abs=1e-4)
    one = tmp_path / "one"
    fsr_run(one, "x", 0.4)
    _, data = build_report([one], n_boot=50)
    assert cell(data)["sem"] is None and cell(data)["mean"] == 0.4


def test_cells_are_model_scaffold_hints_and_iqm_pools_models(tmp_path):
    make_grid(tmp_path, models=("m_a", "m_b"), scaffolds=("flat", "aide"), hint_sets=((), (1,)), records=(1, 2),
              seeds=(0, 1), n_nodes=5)
    runs, data = build_report([tmp_path], n_boot=100)
    assert len(runs) == 2 * 2 * 2 * 2 * 2
    keys = [(c["model"], c["scaffold"], c["hints"]) for c in data["cells"]]
    assert len(keys) == 8 and keys[0] == ("m_a", "flat", "none") and keys[1] == ("m_a", "aide", "none")
    assert all(c["tasks"] == 2 and c["runs"] == 4 for c in data["cells"])
    iq = [(r["hints"], r["scaffold"], r["models"], r["runs"]) for r in data["iqm_by_scaffold"]]
    assert iq == [("none", "flat", 2, 8), ("none", "aide", 2, 8), ("L1", "flat", 2, 8), ("L1", "aide", 2, 8)]


def test_node_types_and_buggy_rate(tmp_path):
    # v_1 draft valid 900, v_2 draft buggy, v_3 improve of v_1 valid 800 (beats), v_4 debug of v_2 valid,
    # v_5 improve of v_1 invalid
    over = {1: dict(parent=0, operator="draft", status="valid", metric=900.0),
            2: dict(parent=0, operator="draft", status="buggy", metric=None),
            3: dict(parent=1, operator="improve", status="valid", metric=800.0),
            4: dict(parent=2, operator="debug", status="valid", metric=950.0),
            5: dict(parent=1, operator="improve", status="invalid", metric=700.0)}
    make_run(tmp_path / "r", n_nodes=5, overrides=over, logs=False)
    _, data = build_report([tmp_path], n_boot=10)
    (row,) = data["node_types"]
    assert (row["nodes"], row["draft"], row["improve"], row["debug"]) == (5, 2, 2, 1)
    assert (row["valid"], row["invalid"], row["buggy"]) == (3, 1, 1)
    assert row["buggy_rate"] == 0.2 and row["draft_buggy_rate"] == 0.5 and row["debug_buggy_rate"] == 0.0
    assert row["improve_beat_parent_rate"] == 0.5  # v_3 beat v_1; v_5 was invalid
    assert row["debug_beat_parent_rate"] is None  # its parent was buggy


def test_cost_per_run_and_per_fsr_point(tmp_path):
    a = fsr_run(tmp_path, "a", 0.5, usd_per_call=0.05, n_nodes=4)  # 8 calls
    b = fsr_run(tmp_path, "b", 5.0, usd_per_call=0.05, n_nodes=4)  # clipped to 0
    _, data = build_report([tmp_path], n_boot=10)
    (row,) = data["cost"]
    sa, sb = (json.loads((d / "summary.json").read_text()) for d in (a, b))
    assert row["runs"] == 2 and row["llm_calls"] == 16
    assert row["usd"] == pytest.approx(0.8) and row["usd_per_run"] == pytest.approx(0.4)
    assert row["fsr_points"] == 0.5 and row["usd_per_fsr_point"] == pytest.approx(1.6)
    assert row["tokens_in"] == sa["tokens_in"] + sb["tokens_in"]
    assert row["tokens_per_fsr_point"] == pytest.approx(
        (sa["tokens_in"] + sa["tokens_out"] + sb["tokens_in"] + sb["tokens_out"]) / 0.5, abs=0.1)


# ---------------------------------------------------------------------------------------------- files
def test_find_runs_recursive_deduplicated(tmp_path):
    make_grid(tmp_path / "grid" / "multirun", models=("m",), scaffolds=("flat",), hint_sets=((),), records=(1, 2),
              seeds=(0,), n_nodes=2)
    single = make_run(tmp_path / "single", n_nodes=2)
    found = find_runs([tmp_path / "grid", tmp_path, single, single / "summary.json"])
    assert len(found) == 3
    assert not any("nodes" in p.parts for p in found)
    with pytest.raises(UserError, match="no run folders"):
        load_runs([tmp_path / "grid" / "multirun" / "m-flat-hnone-r1-s0" / "nodes"])
    with pytest.raises(UserError, match="no such folder"):
        find_runs([tmp_path / "missing"])


def test_aggregation_reads_no_logs(tmp_path, monkeypatch):
    make_grid(tmp_path, models=("m",), scaffolds=("aide",), hint_sets=((),), records=(1,), seeds=(0, 1), n_nodes=6,
              logs=True)
    opened: list[str] = []
    real_open = builtins.open

    def spy(file, *a, **k):
        opened.append(os.fspath(file))
        return real_open(file, *a, **k)

    monkeypatch.setattr(builtins, "open", spy)
    runs, _ = build_report([tmp_path], n_boot=10)
    monkeypatch.undo()
    names = {Path(p).name for p in opened}
    assert names <= {"summary.json", "meta.json", "result.json"}, names
    assert sum(len(r.nodes) for r in runs) == 14


def test_write_report_files(tmp_path):
    make_grid(tmp_path / "runs", models=("m_a", "m_b"), scaffolds=("flat", "aide"), hint_sets=((), (1,)),
              records=(1, 2), seeds=(0, 1), n_nodes=4)
    md = write_report([tmp_path / "runs"], tmp_path / "out", n_boot=200)
    out = tmp_path / "out"
    assert md == out / "report.md"
    text = md.read_text()
    assert "top-3 (paper)" in text and "all-runs mean ± SEM" in text and "outside [0, 3] is set to 0" in text
    assert "IQM" in text and "## Node types" in text and "## Cost" in text
    doc = json.loads((out / "report.json").read_text())
    assert doc["n_runs"] == 32 and doc["n_nodes"] == 32 * 4 and len(doc["cells"]) == 8
    assert doc["bootstrap"] == {"n": 200, "seed": 0}
    with open(out / "cells.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 8 and {"top3_mean", "mean", "sem", "iqm", "iqm_ci_low", "iqm_ci_high"} <= set(rows[0])
    for name in ("runs", "per_task", "iqm_by_scaffold", "node_types", "cost"):
        assert (out / f"{name}.csv").stat().st_size > 50
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == ["cost.png", "fsr_cells.png", "fsr_iqm_by_scaffold.png", "fsr_per_task.png", "node_types.png"]
    for p in pngs:
        data = (out / p).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
        assert f"]({p})" in text
    # the same input gives the same numbers (the bootstrap is seeded)
    write_report([tmp_path / "runs"], tmp_path / "out2", n_boot=200, plots=False)
    assert json.loads((tmp_path / "out2" / "report.json").read_text())["cells"] == doc["cells"]
    assert not list((tmp_path / "out2").glob("*.png"))


def test_plots_in_process_when_no_worker(tmp_path):
    make_grid(tmp_path / "runs", models=("m",), scaffolds=("flat",), hint_sets=((),), records=(1,), seeds=(0,),
              n_nodes=3)
    write_report([tmp_path / "runs"], tmp_path / "out", n_boot=20, plot_workers=0)
    assert (tmp_path / "out" / "fsr_cells.png").is_file()


def scripted_run(tmp_path: Path, fixed: list[str], script_file, runtimes, name="run", progress=None, nodes=4):
    script = script_file([variant(r, crash=r is None, tag=str(i)) for i, r in enumerate(runtimes)], f"{name}.yaml")
    run_dir = tmp_path / name
    overrides = [*fixed, "scaffold=aide", "model=scripted", f"model.path={script}", "coder=wholefile",
                 f"budget.max_nodes={nodes}", f"run_dir={run_dir}"]
    cfg = compose(overrides)
    run = build(cfg, run_dir)
    save_config(cfg, run_dir, overrides)
    if progress is not None:
        run.progress = progress(run)
    return run, run_dir


def test_speedup_is_reported_for_tasks_without_fsr(tmp_path, fixed_collatz, script_file):
    run, run_dir = scripted_run(tmp_path, fixed_collatz, script_file, [800, None, 500, 650])
    run.run()
    md = write_report([tmp_path], tmp_path / "report", n_boot=50, plots=False)
    doc = json.loads((tmp_path / "report" / "report.json").read_text())
    (r,) = doc["runs"]
    assert r["kind"] == "speedup" and r["score"] == pytest.approx(1000 / 500) and r["fsr"] is None
    (c,) = doc["cells"]
    assert c["kind"] == "speedup" and c["mean"] == pytest.approx(2.0) and c["model"] == "scripted"
    text = md.read_text()
    assert "## Speedup" in text and "## FSR" not in text
    (n,) = doc["node_types"]
    assert n["nodes"] == 4 and n["buggy"] == 1


# ---------------------------------------------------------------------------------------------- progress
def test_progress_plain_lines_when_not_a_terminal(tmp_path, fixed_collatz, script_file):
    buf = io.StringIO()
    console = Console(file=buf, force_terminal=False, width=200)
    holder = {}

    def make(run):
        holder["p"] = LiveProgress(run.task.metric.name, run.budget.max_nodes, spend=lambda: run.spend,
                                   console=console)
        return holder["p"].callbacks()

    run, _ = scripted_run(tmp_path, fixed_collatz, script_file, [800, None, 500], progress=make, nodes=3)
    with holder["p"] as p:
        run.run()
    lines = buf.getvalue().splitlines()
    assert not p.use_live and "\x1b[" not in buf.getvalue()
    assert lines[0].startswith("v_0") and "running" in lines[0]
    assert any(line.startswith("v_2") and "buggy" in line for line in lines)
    assert any(line.startswith("v_3") and "best v_3 500" in line for line in lines)
    assert len(lines) == 8  # a start and a finish line per node
    status = p.status_line()
    assert "nodes 3/3" in status and "0 running" in status and "best v_3 runtime_ms=500" in status
    assert "-50.0% vs baseline" in status and "3 calls" in status


def test_progress_live_display_on_a_terminal(tmp_path, fixed_collatz, script_file):
    buf = io.StringIO()
    console = Console(file=buf, force_terminal=True, width=150, color_system=None)
    holder = {}

    def make(run):
        holder["p"] = LiveProgress.for_run(run, max_usd=2.0, console=console, refresh_per_second=20)
        return run.progress

    run, _ = scripted_run(tmp_path, fixed_collatz, script_file, [800, 700], progress=make, nodes=2)
    seen = []
    p = holder["p"]
    orig = p.node_started

    def started(nid, op, parent):
        orig(nid, op, parent)
        seen.append(p.status_line())  # what the live area shows while the node runs

    run.progress.node_started = started
    with p:
        assert p.use_live and p._live is not None
        run.run()
    assert p._live is None
    out = buf.getvalue()
    assert "1 running" in seen[1] and "nodes 0/2" in seen[1] and "best v_0 runtime_ms=1000" in seen[1]
    assert "$0.0000 / $2.00" in out and "2/2 nodes" in out and "best v_2 runtime_ms=700" in out
    assert "v_1   draft of v_0" in out


# ---------------------------------------------------------------------------------------------- judge
class FakeModel:
    """A scripted judge: replies in order; records the messages it got."""

    name = "fake-judge"

    def __init__(self, replies):
        self.replies = list(replies)
        self.seen = []

    def complete(self, messages):
        self.seen.append(messages)
        return Completion(text=self.replies.pop(0), usage=Usage(tokens_in=100, tokens_out=20, usd=0.002))


KEY = ["Muon optimizer for hidden matrices", "trapezoidal LR schedule", "ReLU squared activation"]


def verdicts(*vs):
    return json.dumps({"changes": [{"change": k, "verdict": v, "evidence": "line 12"} for k, v in zip(KEY, vs,
                                                                                                      strict=True)]})


def test_judge_scores_and_retries_a_bad_reply():
    m = FakeModel(["I think it did most of it.", "```json\n" + verdicts("yes", "partial", "no") + "\n```"])
    r = judge_node(m, "Record 3 adds Muon ...", "--- a/x\n+++ b/x\n+muon()\n", key_changes=KEY,
                   hypothesis="use muon")
    assert r.error is None and r.attempts == 2 and r.score == 0.5
    assert [c["credit"] for c in r.changes] == [1.0, 0.5, 0.0]
    assert r.usage["calls"] == 2 and r.usage["usd"] == pytest.approx(0.004)
    prompt = m.seen[0][1]["content"]
    assert "1. Muon optimizer" in prompt and "+muon()" in prompt and "exactly these 3 changes" in prompt
    assert m.seen[1][-1]["role"] == "user" and "could not be used" in m.seen[1][-1]["content"]


def test_judge_reply_checks():
    with pytest.raises(ValueError, match="verdict"):
        parse_reply('{"changes": [{"change": "a", "verdict": "maybe"}]}')
    with pytest.raises(ValueError, match="all 3 key changes"):
        parse_reply('{"changes": [{"change": "a", "verdict": "yes"}]}', KEY)
    got = parse_reply('<think>{"x": 1}</think> {"changes": [{"change": "Muon", "verdict": "YES"}]}')
    assert got[0]["verdict"] == "yes" and got[0]["credit"] == 1.0
    r = judge_node(FakeModel(["no json", "still none"]), "ref", "diff", max_retries=1)
    assert r.score is None and "no JSON object" in r.error


def test_judge_run_writes_judge_json_and_report_shows_it(tmp_path):
    run = fsr_run(tmp_path / "runs", "a", 0.6, n_nodes=4, overrides={2: dict(status="valid", metric=500.0)})
    m = FakeModel([verdicts("yes", "yes", "no")])
    p = judge_run(run, m, "reference text", key_changes=KEY, nodes="best")
    doc = json.loads(p.read_text())
    best = str(json.loads((run / "summary.json").read_text())["best_node"])
    assert best == "2"
    assert doc["nodes"][best]["score"] == pytest.approx(2 / 3, abs=1e-3) and doc["judge_model"] == "fake-judge"
    assert doc["usage"]["calls"] == 1
    judge_run(run, FakeModel([]), "reference text", key_changes=KEY, nodes="best")  # kept: no new call
    md = write_report([tmp_path / "runs"], tmp_path / "out", n_boot=20, plots=False).read_text()
    assert "## Similarity judge" in md and "Muon optimizer for hidden matrices: 1.00" in md
    (row,) = json.loads((tmp_path / "out" / "report.json").read_text())["judge"]
    assert row["best_node_score"] == pytest.approx(0.6667, abs=1e-3)
    assert row["changes"]["ReLU squared activation"] == 0.0


def test_judge_best_is_the_node_the_score_stands_on():
    assert scored_node({"best_node": 5}) == 5
    assert scored_node({"best_node": 5, "reeval": {"chosen_node": 3}}) == 3
    assert scored_node({"best_node": 5, "reeval": {"chosen_node": None}}) is None


def test_stopped_and_running_ladder_runs_are_listed_not_aggregated(tmp_path):
    fsr_run(tmp_path, "done", 0.5, task="nanogpt_mini/record_4")
    stopped = fsr_run(tmp_path, "stopped", None, task="nanogpt_mini/record_4", status="running")
    set_summary(stopped, status="stopped", stop_reason="budget.max_usd: spent 1.0012 USD, cap 1")
    runs, data = build_report([tmp_path], n_boot=10)
    assert {r.kind for r in runs} == {"fsr"}  # no fsr key yet, but a ladder task
    (c,) = data["cells"]
    assert c["runs"] == 1 and c["unscored_runs"] == 0 and c["mean"] == 0.5
    assert data["node_types"][0]["runs"] == 2 and data["cost"][0]["runs"] == 2
    md = write_report([tmp_path], tmp_path / "out", n_boot=10, plots=False).read_text()
    assert "2 runs (1 finished, 1 stopped)" in md and "budget.max_usd: spent" in md
