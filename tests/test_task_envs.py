"""Per-task Python environments (execution/envs.py): the requirements field, one build per requirement
set shared by concurrent workers, the node running in it, a failed build that ends the node (not the
run) and is not retried within the session, and the built-in tasks running in the project's environment."""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from speedrunner.cli import main
from speedrunner.core.errors import TaskError
from speedrunner.core.types import Status
from speedrunner.execution.envs import OK_MARK, EnvExecutor, EnvSpec
from speedrunner.execution.local import LocalExecutor
from speedrunner.runner import make_executor, task_fingerprint
from speedrunner.scoring.outcome import score
from speedrunner.tasks.registry import get_task, list_tasks
from speedrunner.tasks.spec import load_task

PROBE = ("import os, shutil, sys, six; print('prefix:', sys.prefix); print('six:', six.__version__, six.__file__); "
         "print('which:', shutil.which('python')); print('venv:', os.environ.get('VIRTUAL_ENV')); print('score: 1')")
MISSING = "speedrunner-no-such-package-xyz==0.0.1"


def make_task(root: Path, pip: list[str], **extra) -> Path:
    (root / "template").mkdir(parents=True, exist_ok=True)
    (root / "template" / "solve.py").write_text(PROBE.replace("; ", "\n") + "\n")
    (root / "task.yaml").write_text(yaml.safe_dump({
        "name": root.name, "description": "probe the environment", "command": ["{python}", "solve.py"],
        "timeout_s": 60, "metric": {"name": "score", "direction": "maximize"},
        "parsers": [{"pattern": r"^score: (?P<score>[0-9.]+)"}],
        "requirements": {"pip": pip, "torch": "2.x (informative)", **extra}}))
    return root / "task.yaml"


def chain(executor):
    out = [executor]
    while "inner" in getattr(out[-1], "__dict__", {}):
        out.append(out[-1].__dict__["inner"])
    return out


def test_the_requirements_field(tmp_path):
    task = load_task(make_task(tmp_path / "t", ["six==1.16.0"]), "t")
    assert task.requirements["pip"] == ["six==1.16.0"] and task.requirements["torch"] == "2.x (informative)"
    spec = EnvSpec.from_requirements(task.requirements)
    assert spec == EnvSpec(pip=("six==1.16.0",), inherit=True)
    assert EnvSpec.from_requirements({"pip": ["b", "a"]}).key() == EnvSpec.from_requirements({"pip": ["a", "b", "a"]}).key()
    assert EnvSpec.from_requirements({"pip": ["a"]}).key() != EnvSpec.from_requirements({"pip": ["a"], "inherit": False}).key()
    # informative keys alone build nothing, and do not change the task hash
    assert EnvSpec.from_requirements({"python": "3.12", "torch": "2.5", "gpus": 8}) is None
    plain = load_task(make_task(tmp_path / "p", []), "p")
    assert EnvSpec.from_requirements(plain.requirements) is None
    assert task_fingerprint(task) != task_fingerprint(load_task(make_task(tmp_path / "t2", ["six==1.15.0"]), "t"))
    with pytest.raises(TaskError, match="pip options are not allowed"):
        load_task(make_task(tmp_path / "bad", ["--index-url=http://x"]), "bad")


def test_builtin_tasks_run_in_the_project_environment():
    ids = [t for t in list_tasks() if t.startswith("nanogpt_mini/")]
    assert ids, "the nanogpt_mini ladder is missing"
    for tid in [*ids, "collatz"]:
        task = get_task(tid)
        assert EnvSpec.from_requirements(task.requirements) is None, tid
        ex = make_executor({"name": "local"}, task)
        assert not any(isinstance(layer, EnvExecutor) for layer in chain(ex)), tid
        assert task.command[0] == sys.executable, (tid, task.command)


def test_an_environment_is_built_once_and_the_node_runs_in_it(tmp_path):
    task = load_task(make_task(tmp_path / "task", ["six==1.16.0"]), "six")
    envs = tmp_path / "envs"
    events: list[tuple[str, dict]] = []
    workers = []
    for _ in range(2):  # two workers with executors of their own, starting at the same moment
        ex = make_executor({"name": "local", "envs_dir": str(envs)}, task)
        assert isinstance(ex, EnvExecutor) and isinstance(ex.inner, LocalExecutor)
        ex.on_event = lambda event, **f: events.append((event, f))
        workers.append(ex)
    results: dict[int, object] = {}

    def node(i: int) -> None:
        ws = tmp_path / f"v_{i}" / "workspace"
        ws.mkdir(parents=True)
        (ws / "solve.py").write_text((task.template_dir / "solve.py").read_text())
        results[i] = workers[i % 2].run(task.command, cwd=ws, out_dir=ws.parent, timeout_s=60, env=task.env)

    threads = [threading.Thread(target=node, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert [e for e, _ in events].count("env_build_started") == 1, events
    (env_dir,) = [p for p in envs.iterdir() if p.is_dir()]
    assert (env_dir / OK_MARK).is_file()
    for i in range(2):
        outcome = score(task, results[i])
        assert outcome.valid, (outcome.reason, Path(results[i].stderr_path).read_text())
        out = Path(results[i].stdout_path).read_text()
        assert f"prefix: {env_dir}" in out and f"six: 1.16.0 {env_dir}/lib/" in out
        assert f"which: {env_dir}/bin/python" in out and f"venv: {env_dir}" in out
    node(2)  # a later node: nothing is built
    assert [e for e, _ in events].count("env_build_started") == 1 and score(task, results[2]).valid


def test_a_failed_build_ends_the_node_and_the_run_goes_on(tmp_path, monkeypatch, script_file):
    monkeypatch.setenv("SPEEDRUNNER_ENVS", str(tmp_path / "envs"))
    make_task(tmp_path / "tasks" / "broken_env", [MISSING])
    reply = "Rewrite solve.py.\n\n### File: solve.py\n```python\nprint('score: 2')\n```\n"
    run_dir = tmp_path / "run"
    assert main(["run", f"task_paths=[{tmp_path / 'tasks'}]", "task.id=broken_env", "model=scripted",
                 f"model.path={script_file([reply])}", "coder=wholefile", "scaffold=flat", "budget.max_nodes=1",
                 "reeval.runs=0", f"run_dir={run_dir}"]) == 0
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["n_nodes"] == 1
    results = {n: json.loads((run_dir / "nodes" / f"v_{n}" / "result.json").read_text()) for n in (0, 1)}
    for r in results.values():
        assert r["status"] == Status.BUGGY.value
        assert "the task's environment could not be built" in r["reason"]
        assert "No matching distribution found for speedrunner-no-such-package-xyz" in r["reason"]  # pip's last lines
    assert "recorded earlier in this session" in results[1]["reason"]
    assert (run_dir / "nodes" / "v_0" / "env_build.log").is_file()
    events = [json.loads(x) for x in (run_dir / "journal.jsonl").read_text().splitlines()]
    assert [e["node"] for e in events if e["event"] == "env_build_started"] == [0]
    assert [e["node"] for e in events if e["event"] == "env_build_failed"] == [0]
    # a new session (resume, another run) tries the build again: the registry may have been down
    task = load_task(tmp_path / "tasks" / "broken_env" / "task.yaml", "broken_env")
    fresh = make_executor({"name": "local"}, task)
    seen: list[str] = []
    fresh.on_event = lambda event, **f: seen.append(event)
    time.sleep(0.01)
    res = fresh.run(task.command, cwd=tmp_path, out_dir=tmp_path / "again", timeout_s=60)
    assert seen == ["env_build_started", "env_build_failed"] and "could not be built" in res.killed_reason
