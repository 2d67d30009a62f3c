"""Cascaded runs (cascade.py): the oracle climbs the nanogpt_mini ladder, a null model stops at step 1, a
cascade killed at a random point and resumed ends with the same steps; the stop rule and the claim's
statistics on their own.

At smoke size every record trains the same 10 steps, so the records do not differ in speed and "faster
than its root" would be a coin toss: the runs here use ``require_faster=false`` (the chain goes on with
the best valid agent node), and the default rule is tested on summaries written by hand."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import speedrunner
from speedrunner.cascade import (
    Cascade,
    CascadeSpec,
    best_of_step,
    claim_verdict,
    parse_range,
    spec_from_args,
    split_args,
    suite_tasks,
)
from speedrunner.core.errors import UserError

REPO = Path(__file__).resolve().parent.parent
LADDER = Path(speedrunner.__file__).parent / "benchmarks" / "nanogpt_mini"
ARGS = ["suite=nanogpt_mini", "records=1-3", "model=oracle", "task.size=smoke", "budget.max_nodes=1",
        "reeval.runs=0", "require_faster=false"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    """A private SPEEDRUNNER_CACHE: the prepared data set (linked) and a calibration of this machine for
    records 1-3 at smoke size, so that no step runs its next record on the fly for FSR."""
    from speedrunner.data import nanogpt_mini
    from speedrunner.scoring.calibration import calibration_path

    data = nanogpt_mini.prepare()
    root = tmp_path_factory.mktemp("cache")
    (root / "data").mkdir()
    (root / "data" / "nanogpt_mini").symlink_to(data)
    old = os.environ.get("SPEEDRUNNER_CACHE")
    os.environ["SPEEDRUNNER_CACHE"] = str(root)
    try:
        path = calibration_path("nanogpt_mini", "smoke", 1)
        recs = {str(r): {"mean_ms": t, "significant": None} for r, t in ((1, 3000.0), (2, 2000.0), (3, 1500.0))}
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"schema": 1, "suite": "nanogpt_mini", "size": "smoke", "fingerprint": "test",
                                    "records": recs}))
        yield root
    finally:
        if old is None:
            os.environ.pop("SPEEDRUNNER_CACHE", None)
        else:
            os.environ["SPEEDRUNNER_CACHE"] = old


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d.name))
    out, stack = [], [pid]
    while stack:
        for c in children.get(stack.pop(), []):
            out.append(c)
            stack.append(c)
    return out


def _cli(*args: str, cache: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, SPEEDRUNNER_CACHE=str(cache))
    return subprocess.run([sys.executable, "-m", "speedrunner", "cascade", *args], capture_output=True, text=True,
                          env=env, timeout=timeout, cwd=str(REPO))


def test_oracle_cascade_killed_and_resumed_reproduces_the_ladder(cache, tmp_path):
    out = tmp_path / "cascade"
    env = dict(os.environ, SPEEDRUNNER_CACHE=str(cache))
    proc = subprocess.Popen([sys.executable, "-m", "speedrunner", "cascade", *ARGS, f"run_dir={out}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=str(REPO))
    delay = random.uniform(3.0, 22.0)
    deadline = time.time() + delay
    while time.time() < deadline and proc.poll() is None:
        time.sleep(0.1)
    victims = _descendants(proc.pid)
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)  # a crash: the cascade and the training it had started
    for pid in victims:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()
    if (out / "cascade.json").is_file():
        res = _cli("--resume", str(out), cache=cache)
    else:  # killed before the cascade wrote anything: the same command starts (or resumes) it
        res = _cli(*ARGS, f"run_dir={out}", cache=cache)
    assert res.returncode == 0, f"killed after {delay:.1f} s; resume failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    doc = json.loads((out / "cascade.json").read_text())
    assert doc["status"] == "finished" and doc["stopped_because"] == "last_record", f"killed after {delay:.1f} s"
    assert not doc["broke_down"] and doc["record_reached"] == 3
    steps = doc["steps"]
    assert [(s["step"], s["record"], s["target_record"], s["task"]) for s in steps] == [
        (1, 1, 2, "nanogpt_mini/record_1"), (2, 2, 3, "nanogpt_mini/record_2")]
    for s in steps:  # each step's best is the next record's code
        ws = out / s["run_dir"] / "nodes" / f"v_{s['best_node']}" / "workspace"
        assert s["best_node"] == 1 and s["best_equals_record"] is True
        assert (ws / "train_gpt.py").read_text() == (LADDER / f"record_{s['target_record']}" / "train_gpt.py").read_text()
        assert s["repro"]["line_recall"] == 1.0 and s["repro"]["hunk_recall"] == 1.0
        assert s["t_record_source"] == "calibration"
        summary = json.loads((out / s["run_dir"] / "summary.json").read_text())
        assert summary["status"] == "finished" and summary["cascade"]["step"] == s["step"]
        assert summary["repro"]["max_line_recall"] == 1.0
    # step 2 starts from step 1's best node, under record 2's rules
    assert steps[1]["root_source"] == {"kind": "node", "step": 1, "run_dir": steps[0]["run_dir"], "node": 1,
                                       "path": "roots/step_02"}
    v0 = out / steps[1]["run_dir"] / "nodes" / "v_0" / "workspace"
    assert sorted(p.name for p in v0.iterdir()) == ["train_gpt.py"]
    assert (v0 / "train_gpt.py").read_text() == (LADDER / "record_2" / "train_gpt.py").read_text()
    cfg = (out / steps[1]["run_dir"] / "config.yaml").read_text()
    assert "id: nanogpt_mini/record_2" in cfg and "root_from:" in cfg
    ladder = doc["reference_ladder"]
    assert ladder["source"] == "calibration" and ladder["speedup_over_first"] == {"1": 1.0, "2": 1.5, "3": 2.0}
    assert steps[1]["speedup_over_first_record_ref"] == 2.0 and doc["t_first_record"] == 3000.0
    assert (out / "cascade.png").stat().st_size > 5000 and doc["plot"] == "cascade.png"
    # the same command again: every step is finished, nothing runs
    again = _cli(*ARGS, f"run_dir={out}", cache=cache)
    assert again.returncode == 0, again.stderr[-2000:]
    assert again.stdout.count("finished before") == 2
    assert json.loads((out / "cascade.json").read_text())["steps"][1]["best_node"] == 1
    # another cascade in the same folder is refused; report and view read the steps as runs
    other = _cli(*[a for a in ARGS if not a.startswith("records")], "records=1-2", f"run_dir={out}", cache=cache)
    assert other.returncode == 2 and "holds another cascade" in other.stderr
    from speedrunner.report import write_viewer
    from speedrunner.report.report import build_report

    runs, data = build_report([out], n_boot=10)
    assert len(runs) == 2 and {r["task"] for r in data["repro"]} == {"nanogpt_mini/record_1", "nanogpt_mini/record_2"}
    assert write_viewer(out / steps[1]["run_dir"]).is_file()


def test_null_model_stops_at_step_1(cache, tmp_path):
    spec = CascadeSpec(suite="nanogpt_mini", first=1, last=3,
                       overrides=["model=null", "task.size=smoke", "budget.max_nodes=1", "reeval.runs=0"])
    lines: list[str] = []
    doc = Cascade(spec, tmp_path / "c", log=lines.append).run()
    assert [s["step"] for s in doc["steps"]] == [1]
    (s,) = doc["steps"]
    assert s["stopped_because"] == "no_valid_node" and s["best_node"] is None and s["n_valid"] == 0
    assert doc["broke_down"] and doc["stopped_at_step"] == 1 and doc["record_reached"] == 1
    assert doc["final"] is None and doc["claim"] is None
    assert not (tmp_path / "c" / "step_02_record_2").exists()
    assert (tmp_path / "c" / "cascade.png").is_file()
    null_repro = json.loads((tmp_path / "c" / "step_01_record_1" / "nodes" / "v_1" / "repro.json").read_text())
    assert null_repro["line_recall"] == 0.0 and null_repro["hunk_recall"] == 0.0


# ------------------------------------------------------------------------------------ without training
def _summary(d: Path, **kw) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    s = {"status": "finished", "stop_reason": "max_nodes", "direction": "minimize", "baseline_metric": 100.0,
         "best_node": 0, "best_metric": 100.0, "n_nodes": 3, "n_valid": 2, **kw}
    (d / "summary.json").write_text(json.dumps(s))
    return d


def _result(d: Path, nid: int, status: str, metric: float | None) -> None:
    (d / "nodes" / f"v_{nid}").mkdir(parents=True, exist_ok=True)
    (d / "nodes" / f"v_{nid}" / "result.json").write_text(json.dumps({"status": status, "metric": metric}))


def test_the_stop_rule(tmp_path):
    # re-evaluation chose a node, faster than the root: go on, with the re-evaluated time
    r = best_of_step(_summary(tmp_path / "a", reeval={"chosen_node": 2, "nodes": {"2": {"metric_mean": 80.0}}}))
    assert (r["stop"], r["best_node"], r["metric"], r["metric_source"]) == (None, 2, 80.0, "reeval")
    assert r["speedup_over_root"] == 1.25
    # re-evaluated, but slower than the root
    r = best_of_step(_summary(tmp_path / "b", reeval={"chosen_node": 2, "nodes": {"2": {"metric_mean": 120.0}}}))
    assert r["stop"] == "not_faster" and r["best_node"] == 2
    assert best_of_step(tmp_path / "b", require_faster=False)["stop"] is None
    # no node passed re-evaluation
    r = best_of_step(_summary(tmp_path / "c", reeval={"chosen_node": None, "nodes": {}}))
    assert r["stop"] == "no_valid_node_passed_reeval"
    # no re-evaluation: the search's best; the root itself was best
    d = _summary(tmp_path / "d")
    _result(d, 1, "valid", 130.0)
    _result(d, 2, "valid", 110.0)
    _result(d, 3, "buggy", None)
    assert best_of_step(d)["stop"] == "not_faster"
    r = best_of_step(d, require_faster=False)
    assert (r["stop"], r["best_node"], r["metric"]) == (None, 2, 110.0)
    r = best_of_step(_summary(tmp_path / "e", best_node=3, best_metric=90.0))
    assert (r["stop"], r["best_node"], r["metric_source"]) == (None, 3, "search")
    assert best_of_step(_summary(tmp_path / "f", n_valid=0))["stop"] == "no_valid_node"
    assert best_of_step(_summary(tmp_path / "g", status="stopped", stop_reason="max_usd"))["stop"].startswith(
        "step_not_finished")


def test_claim_needs_significance_and_the_target():
    def runs(times, loss=5.0, valid=True):
        return [{"metric": t, "val_loss": loss, "valid": valid} for t in times]

    record = runs([1000, 1010, 990, 1005, 995])
    faster = claim_verdict(runs([900, 905, 895, 910, 890]), record, 5.58)
    assert faster["beats_last_record"] and faster["p_faster"] < 0.01 and faster["reaches_target"]
    noisy = claim_verdict(runs([990, 1020, 960, 1000, 985]), record, 5.58)
    assert not noisy["beats_last_record"] and noisy["p_faster"] > 0.01
    missed = claim_verdict(runs([900, 905, 895, 910, 890], loss=5.7), record, 5.58)
    assert not missed["beats_last_record"] and not missed["reaches_target"]
    invalid = claim_verdict(runs([900, 905, 895, 910, 890]) + runs([1], valid=False), record, 5.58)
    assert not invalid["beats_last_record"] and not invalid["all_valid"]


def test_arguments_and_ranges(tmp_path):
    own, rest = split_args(["suite=s", "records=1-3", "beyond=2", "model=oracle", "task.size=smoke"])
    assert own == {"suite": "s", "records": "1-3", "beyond": "2"} and rest == ["model=oracle", "task.size=smoke"]
    with pytest.raises(UserError, match="chosen by the cascade"):
        split_args(["suite=s", "task.id=x"])
    tasks = suite_tasks("nanogpt_mini")
    assert sorted(tasks) == list(range(1, 10)) and tasks[3]["id"] == "nanogpt_mini/record_3"
    assert parse_range("1-3", sorted(tasks), "nanogpt_mini") == (1, 3)
    assert parse_range("all", sorted(tasks), "nanogpt_mini") == (1, 10)
    for bad, msg in (("1-11", "no task for transition"), ("3-3", "at least two"), ("x", "write a range")):
        with pytest.raises(UserError, match=msg):
            parse_range(bad, sorted(tasks), "nanogpt_mini")
    spec, run_dir = spec_from_args(["suite=nanogpt_mini", "records=2-4", "beyond=1", "run_dir=D", "model=null"])
    assert (spec.first, spec.last, spec.beyond, run_dir, spec.overrides) == (2, 4, 1, "D", ["model=null"])
    from speedrunner.cascade import plan

    steps = plan(spec, tasks)
    assert [(s.name, s.task_id, s.mode) for s in steps] == [
        ("step_01_record_2", "nanogpt_mini/record_2", "ladder"), ("step_02_record_3", "nanogpt_mini/record_3", "ladder"),
        ("step_03_beyond_1", "nanogpt_mini/record_3", "beyond")]
    c = Cascade(spec, tmp_path)
    ov = c._overrides(steps[2], tmp_path / "x", tmp_path)
    assert "hints=[]" in ov and "task.size=null" in ov and any(o.startswith("+task.root_from=") for o in ov)
