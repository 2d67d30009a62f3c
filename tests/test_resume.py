"""Crash safety: a run killed with SIGKILL at any point and resumed ends with the same tree as a run
that was never interrupted, and no finished node is run again."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from conftest import REPO, read_summary, read_tree, run_cli, variant

from speedrunner.workspace.journal import read_events

X = None
SCRIPT = [X, 900, X, X, 850, X, 840, X, 800, X, 790, 780]


def _args(script: Path, run_dir: Path) -> list[str]:
    tasks = script.parent / "tasks"
    return ["run", f"task_paths=[{tasks}]", "task.id=collatz_fixed", "scaffold=aide", "model=scripted", f"model.path={script}", "coder=wholefile",
            "budget.max_nodes=12", f"run_dir={run_dir}"]


def shape(tree):
    return {i: (n["parent"], n["operator"], n["status"], n["metric"]) for i, n in tree.items()}


def assert_no_node_ran_twice(run_dir: Path) -> None:
    events = read_events(run_dir / "journal.jsonl")
    finished = Counter(e["node"] for e in events if e["event"] == "node_finished")
    assert all(c == 1 for c in finished.values()), finished
    done: set[int] = set()
    for e in events:
        if e["event"] == "node_finished":
            done.add(e["node"])
        if e["event"] in ("exec_started", "node_started") and e.get("node") in done:
            raise AssertionError(f"v_{e['node']} was started again after it finished: {e}")


def test_sigkill_at_many_points_then_resume_gives_the_same_tree(tmp_path, script_file, fixed_collatz):
    script = script_file([variant(r, crash=r is None, tag=str(i)) for i, r in enumerate(SCRIPT)])
    ref = tmp_path / "reference"
    assert run_cli(*_args(script, ref)).returncode == 0
    want = shape(read_tree(ref))

    run_dir = tmp_path / "killed"
    kills = [6, 17, 18, 31, 44, 57]  # journal events after which the runner is SIGKILLed
    p = run_cli(*_args(script, run_dir), env={"SPEEDRUNNER_TEST_KILL_AFTER_EVENT": str(kills[0])})
    assert p.returncode == -signal.SIGKILL, p.stderr
    for k in kills[1:]:
        p = run_cli("resume", str(run_dir), env={"SPEEDRUNNER_TEST_KILL_AFTER_EVENT": str(k)})
        assert p.returncode == -signal.SIGKILL, p.stdout + p.stderr
    p = run_cli("resume", str(run_dir))
    assert p.returncode == 0, p.stdout + p.stderr
    assert shape(read_tree(run_dir)) == want
    assert_no_node_ran_twice(run_dir)
    events = read_events(run_dir / "journal.jsonl")
    # a kill may land on the node_discarded event a resume writes before its run_resumed event
    assert len(kills) - 2 <= sum(e["event"] == "run_resumed" for e in events) <= len(kills)
    assert any(e["event"] == "node_discarded" for e in events) and events[-1]["event"] == "run_finished"
    assert read_summary(run_dir)["status"] == "finished"
    assert read_summary(run_dir)["best_node"] == read_summary(ref)["best_node"]


def test_external_sigkill_during_a_run(tmp_path, script_file, fixed_collatz):
    """A kill from outside at an arbitrary moment (here: while nodes are running)."""
    slow = [variant(r, crash=r is None, tag=str(i)).replace("import sys", "import sys, time\ntime.sleep(0.3)")
            for i, r in enumerate(SCRIPT)]
    script = script_file(slow)
    ref = tmp_path / "reference"
    assert run_cli(*_args(script, ref)).returncode == 0
    run_dir = tmp_path / "killed"
    env = dict(os.environ)
    proc = subprocess.Popen([sys.executable, "-m", "speedrunner", *_args(script, run_dir)], cwd=str(REPO),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.time() + 60
    while time.time() < deadline:  # wait until a few nodes exist, then kill mid-run
        if len(list((run_dir / "nodes").glob("v_*"))) >= 4 if (run_dir / "nodes").exists() else False:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    p = run_cli("resume", str(run_dir))
    assert p.returncode == 0, p.stdout + p.stderr
    assert shape(read_tree(run_dir)) == shape(read_tree(ref))
    assert_no_node_ran_twice(run_dir)


def test_resume_with_a_raised_budget_continues(tmp_path, script_file, fixed_collatz):
    script = script_file([variant(r, crash=r is None, tag=str(i)) for i, r in enumerate(SCRIPT)])
    run_dir = tmp_path / "run"
    args = _args(script, run_dir)
    args[args.index("budget.max_nodes=12")] = "budget.max_nodes=5"
    assert run_cli(*args).returncode == 0
    assert read_summary(run_dir)["n_nodes"] == 5
    p = run_cli("resume", str(run_dir), "budget.max_nodes=12")
    assert p.returncode == 0, p.stderr
    assert read_summary(run_dir)["n_nodes"] == 12
    ref = tmp_path / "ref"
    assert run_cli(*_args(script, ref)).returncode == 0
    assert shape(read_tree(run_dir)) == shape(read_tree(ref))


def test_resume_refuses_a_changed_config(tmp_path, script_file, fixed_collatz):
    script = script_file([variant(800)])
    run_dir = tmp_path / "run"
    args = _args(script, run_dir)
    args[args.index("budget.max_nodes=12")] = "budget.max_nodes=1"
    assert run_cli(*args).returncode == 0
    p = run_cli("resume", str(run_dir), "scaffold.debug_prob=0.9")
    assert p.returncode == 2 and "only budget" in p.stderr and "Traceback" not in p.stderr
    cfg = run_dir / "config.yaml"
    cfg.write_text(cfg.read_text().replace("debug_prob: 0.5", "debug_prob: 0.1"))
    p = run_cli("resume", str(run_dir))
    assert p.returncode == 2 and "config hash" in p.stderr and "Traceback" not in p.stderr
    meta = json.loads((run_dir / "nodes" / "v_1" / "meta.json").read_text())
    assert meta["parent"] == 0  # nothing was touched


def test_resume_refuses_a_task_that_changed(tmp_path, script_file, fixed_collatz):
    script = script_file([variant(800)])
    run_dir = tmp_path / "run"
    args = _args(script, run_dir)
    args[args.index("budget.max_nodes=12")] = "budget.max_nodes=1"
    assert run_cli(*args).returncode == 0
    template = tmp_path / "tasks" / "collatz_fixed" / "template" / "solve.py"
    template.write_text(template.read_text() + "# edited after the run started\n")
    p = run_cli("resume", str(run_dir), "budget.max_nodes=2")
    assert p.returncode == 2 and "changed since the run started" in p.stderr and "Traceback" not in p.stderr


def test_resume_refuses_a_lower_budget(tmp_path, script_file, fixed_collatz):
    script = script_file([variant(800)])
    run_dir = tmp_path / "run"
    args = _args(script, run_dir)
    args[args.index("budget.max_nodes=12")] = "budget.max_nodes=3"
    assert run_cli(*args).returncode == 0
    p = run_cli("resume", str(run_dir), "budget.max_nodes=1")
    assert p.returncode == 2 and "cannot be lower" in p.stderr
