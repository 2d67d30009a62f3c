"""Parallel search (executor.workers > 1): nodes in flight at once, the decision log, resume after a
SIGKILL, budget caps, and the device pool that hands out GPUs/cores and always takes them back.

The test task's nodes learn their own id from their folder (nodes/v_N/workspace) and look up what to do
in plan.json (sleep, metric, crash, hang, flood the log), so outcomes depend on node ids only, never on
which model reply a node happened to get while several nodes were being coded at once.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import REPO, read_summary, read_tree

from speedrunner.core.errors import UserError
from speedrunner.core.types import Completion, ExecResult, Usage
from speedrunner.execution.pool import DevicePool, Slot, detect_gpus, pinned, run_in_slot
from speedrunner.llm.cache import CachingModel, ResponseCache
from speedrunner.runner import build, compose, load_run_config, save_config
from speedrunner.workspace.journal import read_events

TASK_YAML = """\
name: par
description: Sleep as plan.json says for this node, then print its runtime.
command: ["{python}", "solve.py"]
timeout_s: 30
editable: ["solve.py"]
metric: {name: runtime_ms, direction: minimize, kind: other}
parsers:
  - pattern: '^runtime_ms: (?P<runtime_ms>[0-9.]+)'
valid_if:
  - exit_code == 0
"""

SOLVE = """\
# variant {tag}
import json, os, sys, time
node = int(os.path.basename(os.path.dirname(os.getcwd())).split("_")[1])
plan = json.load(open("plan.json"))
p = plan.get(str(node), plan["default"])
print("devices", os.environ.get("SPEEDRUNNER_SLOT"), os.environ.get("CUDA_VISIBLE_DEVICES"), flush=True)
time.sleep(p.get("sleep", 0.5))
mode = p.get("mode", "ok")
if mode == "crash":
    sys.exit("boom")
if mode == "hang":
    time.sleep(120)
if mode == "flood":
    while True:
        sys.stdout.write("x" * 65536)
print("runtime_ms:", p["metric"])
"""


def reply(tag: object) -> str:
    return f"Rewrite solve.py.\n\n### File: solve.py\n```python\n{SOLVE.format(tag=tag)}```\n"


class UniqueModel:
    """An instant model whose every reply is a different (but equivalent) solve.py. Thread-safe."""

    name = "unique"

    def __init__(self) -> None:
        self._n = itertools.count(1)
        self._lock = threading.Lock()

    def complete(self, messages):
        with self._lock:
            i = next(self._n)
        return Completion(text=reply(i), usage=Usage(tokens_in=10, tokens_out=10))


def make_task(tmp_path: Path, plan: dict) -> list[str]:
    t = tmp_path / "tasks" / "par"
    (t / "template").mkdir(parents=True, exist_ok=True)
    (t / "task.yaml").write_text(TASK_YAML)
    (t / "template" / "solve.py").write_text(SOLVE.format(tag=0))
    (t / "template" / "plan.json").write_text(json.dumps({"0": {"sleep": 0.2, "metric": 1000},
                                                          "default": {"sleep": 0.5, "metric": 900}, **plan}))
    return [f"task_paths=[{tmp_path / 'tasks'}]", "task.id=par", "model=null", "coder=wholefile",
            "reeval.runs=0"]


def run_parallel(tmp_path: Path, plan: dict, *extra: str, name: str = "run"):
    run_dir = tmp_path / name
    overrides = [*make_task(tmp_path, plan), f"run_dir={run_dir}", *extra]
    cfg = compose(overrides)
    run = build(cfg, run_dir)
    model = UniqueModel()
    run.models = {role: model for role in run.models}
    save_config(cfg, run_dir, overrides, run.task)
    run.run()
    return run, run_dir, read_events(run_dir / "journal.jsonl")


def intervals(events) -> dict[int, tuple[float, float, dict]]:
    """node -> (exec start, exec end, exec_started event)."""
    start = {e["node"]: e for e in events if e["event"] == "exec_started"}
    end = {e["node"]: e["t"] for e in events if e["event"] == "exec_finished"}
    return {n: (start[n]["t"], end[n], start[n]) for n in end if n in start}


def overlapping(iv) -> list[tuple[int, int]]:
    ids = sorted(iv)
    return [(a, b) for a, b in itertools.combinations(ids, 2) if iv[a][0] < iv[b][1] and iv[b][0] < iv[a][1]]


def max_concurrency(iv) -> int:
    points = sorted([(s, 1) for s, _, _ in iv.values()] + [(e, -1) for _, e, _ in iv.values()],
                    key=lambda x: (x[0], x[1]))
    best = cur = 0
    for _, d in points:
        cur += d
        best = max(best, cur)
    return best


def check_decision_log(events, tree: dict[int, dict], max_nodes: int) -> list[dict]:
    decisions = [e for e in events if e["event"] == "decision"]
    assert [d["step"] for d in decisions] == list(range(len(decisions)))  # each step logged once, in order
    ids = [i for d in decisions for i in d["nodes"]]
    assert ids == list(range(1, len(ids) + 1)) and len(ids) <= max_nodes  # ids given in decision order
    for d in decisions:
        assert 0 in d["known"] and all(k < d["nodes"][0] for k in d["known"])
        for i in d["nodes"]:
            if i in tree:
                assert (tree[i]["parent"], tree[i]["operator"]) == (d["parent"], d["operator"]), (i, d)
    return decisions


def assert_no_node_ran_twice(events) -> None:
    done: set[int] = set()
    for e in events:
        if e["event"] in ("exec_started", "node_started") and e.get("node") in done:
            raise AssertionError(f"v_{e['node']} was started again after it finished: {e}")
        if e["event"] == "node_finished":
            done.add(e["node"])


# ---------------------------------------------------------------------- one worker
def test_one_worker_is_the_sequential_search(tmp_path, script_file, fixed_collatz):
    """executor.workers=1 takes the sequential path: the tree of the paper's rules (check_policy), nodes
    made strictly one after the other, no decision events, and the journal's old fields only."""
    from test_search_e2e import DEBUG_SCRIPT, SCAFFOLD, check_policy, script_of

    script = script_file(script_of(DEBUG_SCRIPT))
    trees = []
    for name, extra in (("default", []), ("k1", ["executor.workers=1"])):
        run_dir = tmp_path / name
        cfg = compose([*fixed_collatz, "scaffold=aide", "model=scripted", f"model.path={script}", "coder=wholefile",
                       "budget.max_nodes=12", "reeval.runs=0", f"run_dir={run_dir}", *extra])
        run = build(cfg, run_dir)
        assert run.workers == 1 and not run.pool.active
        run.run()
        events = read_events(run_dir / "journal.jsonl")
        assert not any(e["event"] == "decision" for e in events)
        assert not any("worker" in e or "slot" in e for e in events)
        order = [e["node"] for e in events if e["event"] in ("node_started", "node_finished") and e["node"] != 0]
        assert order == [i for i in range(1, 13) for _ in range(2)]  # start, finish, start, finish, ...
        assert "workers" not in read_summary(run_dir)
        trees.append(read_tree(run_dir))
    check_policy(trees[1], SCAFFOLD["aide"], 0, 12)
    assert trees[0] == trees[1]


# ---------------------------------------------------------------------- several workers
def test_three_workers_run_nodes_at_once_and_never_exceed_max_nodes(tmp_path):
    run, run_dir, events = run_parallel(tmp_path, {"default": {"sleep": 0.8, "metric": 900}}, "scaffold=aide",
                                        "executor.workers=3", "budget.max_nodes=7")
    tree = read_tree(run_dir)
    assert sorted(tree) == list(range(8)) and all(tree[i]["status"] == "valid" for i in tree)
    iv = intervals(events)
    pairs = overlapping(iv)
    assert pairs, "no two nodes ran at the same time"
    assert max_concurrency(iv) == 3 and run.pool.peak == 3
    for a, b in pairs:  # nodes running at the same time hold different slots
        assert iv[a][2]["slot"] != iv[b][2]["slot"]
    assert run.pool.in_use() == {} and run.pool.free() == 3
    decisions = check_decision_log(events, tree, 7)
    assert decisions[0]["nodes"] == [1, 2, 3] and decisions[0]["operator"] == "draft"
    assert sum(len(d["nodes"]) for d in decisions) == 7
    assert {e["worker"] for e in events if e["event"] == "node_started" and e["node"] != 0} <= {0, 1, 2}
    s = read_summary(run_dir)
    assert s["status"] == "finished" and s["n_nodes"] == 7 and s["workers"] == 3
    assert events[0]["event"] == "run_started" and events[0]["workers"] == 3
    assert_no_node_ran_twice(events)


def test_a_free_worker_expands_the_best_node_known_at_that_moment(tmp_path):
    """v_1 runs long; meanwhile v_2 finishes and the free worker improves v_2 (no barrier waits for v_1);
    once v_1 finishes with the best time, the next step improves v_1."""
    plan = {"1": {"sleep": 2.0, "metric": 500}, "2": {"sleep": 0.2, "metric": 800}, "3": {"sleep": 0.2, "metric": 700},
            "4": {"sleep": 0.2, "metric": 750}, "default": {"sleep": 0.2, "metric": 600}}
    run, run_dir, events = run_parallel(tmp_path, plan, "scaffold=aide", "scaffold.n_initial=2",
                                        "scaffold.debug_prob=0", "executor.workers=2", "budget.max_nodes=14")
    tree = read_tree(run_dir)
    decisions = check_decision_log(events, tree, 14)
    metric = {e["node"]: e["metric"] for e in events if e["event"] == "node_finished"}
    for d in decisions[1:]:  # every improve expands the best finished node it knew of (ties: the newer)
        best = min(d["known"], key=lambda i: (metric[i], -i))
        assert d["operator"] == "improve" and d["parent"] == best == d["best"], d
    by_node = {i: d for d in decisions for i in d["nodes"]}
    assert by_node[3]["parent"] == 2 and 1 not in by_node[3]["known"]  # decided while v_1 was still running
    assert by_node[4]["parent"] == 3 and 1 not in by_node[4]["known"]
    after_v1 = [d for d in decisions if 1 in d["known"]]
    assert after_v1 and all(d["parent"] == 1 for d in after_v1)  # 500: the best of all, once known
    assert read_summary(run_dir)["best_node"] == 1


def test_devices_are_given_back_after_success_crash_timeout_and_kill(tmp_path):
    plan = {"1": {"sleep": 0.3, "metric": 800}, "2": {"sleep": 0.3, "mode": "crash"},
            "3": {"sleep": 0.3, "mode": "hang"}, "4": {"sleep": 0.3, "mode": "flood"},
            "5": {"sleep": 0.3, "metric": 700}, "6": {"sleep": 0.3, "metric": 750}}
    run, run_dir, events = run_parallel(tmp_path, plan, "scaffold=flat", "scaffold.n_initial=6", "executor.workers=3",
                                        "executor.devices=[0,1,2]", "executor.timeout_s=2",
                                        "executor.max_log_bytes=200000", "budget.max_nodes=6")
    tree = read_tree(run_dir)
    assert [tree[i]["status"] for i in range(1, 7)] == ["valid", "buggy", "buggy", "buggy", "valid", "valid"]
    results = {i: json.loads((run_dir / "nodes" / f"v_{i}" / "result.json").read_text()) for i in range(1, 7)}
    assert "boom" in results[2]["reason"] and "timed out" in results[3]["reason"] and "log exceeded" in results[4]["reason"]
    assert run.pool.in_use() == {} and run.pool.free() == 3
    iv = intervals(events)
    assert max_concurrency(iv) >= 2
    for a, b in overlapping(iv):
        assert iv[a][2]["gpus"] != iv[b][2]["gpus"] and iv[a][2]["slot"] != iv[b][2]["slot"]
    for n, (_, _, ev) in iv.items():  # the node saw the devices the journal says it got
        assert ev["gpus"] == [str(ev["slot"])] and ev["threads"] == 1
        first = (run_dir / "nodes" / f"v_{n}" / "stdout.log").read_text().splitlines()[0]
        assert first == f"devices {ev['slot']} {ev['slot']}"


class _BrokenExecutor:
    """Runs the first command (the root), then raises: an error of the runner's own, not the node's."""

    def __init__(self, inner):
        self.inner = inner
        self.threads, self.notes, self.calls = 1, [], 0

    def run(self, command, cwd, out_dir, timeout_s, env=None, hidden=None):
        self.calls += 1
        if self.calls > 1:
            time.sleep(0.2)
            raise RuntimeError("executor exploded")
        return self.inner.run(command, cwd=cwd, out_dir=out_dir, timeout_s=timeout_s, env=env, hidden=hidden)


def test_an_error_in_the_runner_gives_the_devices_back_and_is_raised(tmp_path):
    run_dir = tmp_path / "run"
    cfg = compose([*make_task(tmp_path, {}), "scaffold=flat", "scaffold.n_initial=4", "executor.workers=2",
                   "budget.max_nodes=4", f"run_dir={run_dir}"])
    run = build(cfg, run_dir)
    run.models = {role: UniqueModel() for role in run.models}
    run.executor = _BrokenExecutor(run.executor)
    with pytest.raises(RuntimeError, match="executor exploded"):
        run.run()
    assert run.pool.in_use() == {} and run.pool.free() == 2
    assert run.executor.calls == 3  # the root, then two nodes; no new node started after the error


def test_a_budget_cap_stops_new_nodes_lets_running_ones_finish_and_resumes(tmp_path):
    run, run_dir, events = run_parallel(tmp_path, {}, "scaffold=aide", "executor.workers=3", "budget.max_nodes=8",
                                        "budget.max_llm_calls=4")
    s = read_summary(run_dir)
    assert s["status"] == "stopped" and "budget.max_llm_calls" in s["stop_reason"]
    assert 4 <= s["llm_calls"] <= 4 + 2  # at most one call per other worker past the cap
    assert events[-1]["event"] == "run_stopped" and run.pool.in_use() == {}
    made = {e["node"] for e in events if e["event"] == "node_finished"} - {0}
    assert events[-1]["next_node"] == min(set(range(1, 9)) - made)
    started = {e["node"] for e in events if e["event"] == "node_started"}
    assert started == made  # nodes in flight at the cap finished; none was left half-made
    # raise the cap: the logged decisions are kept, and the run goes on to max_nodes
    cfg, extra = load_run_config(run_dir, ["budget.max_llm_calls=100"])
    run2 = build(cfg, run_dir)
    run2.models = {role: UniqueModel() for role in run2.models}
    assert run2.pool.in_use() == {}
    run2.run()
    events = read_events(run_dir / "journal.jsonl")
    tree = read_tree(run_dir)
    assert sorted(tree) == list(range(9)) and read_summary(run_dir)["status"] == "finished"
    check_decision_log(events, tree, 8)
    assert_no_node_ran_twice(events)


def test_resume_refuses_a_decision_log_the_policy_would_not_take(tmp_path):
    from speedrunner.search.loop import ReplayMismatch

    run, run_dir, events = run_parallel(tmp_path, {}, "scaffold=aide", "executor.workers=2", "budget.max_nodes=4")
    journal = run_dir / "journal.jsonl"
    lines = journal.read_text().splitlines()
    for i, line in enumerate(lines):
        e = json.loads(line)
        if e["event"] == "decision" and e["step"] == 1:
            e["draw"] = 0.123  # not the number the seeded policy draws at step 1
            lines[i] = json.dumps(e)
    journal.write_text("\n".join(lines) + "\n")
    cfg, _ = load_run_config(run_dir, ["budget.max_nodes=5"])
    run2 = build(cfg, run_dir)
    run2.models = {role: UniqueModel() for role in run2.models}
    with pytest.raises(ReplayMismatch, match="step 1"):
        run2.run()
    assert run2.pool.in_use() == {}


DRIVER = """\
import itertools, json, os, sys, threading
from pathlib import Path
from speedrunner.core.types import Completion, Usage
from speedrunner.llm.cache import CachingModel
from speedrunner.runner import build, check_task_unchanged, compose, load_run_config, save_config

mode, run_dir, conf = sys.argv[1], Path(sys.argv[2]), json.loads(Path(sys.argv[3]).read_text())
template = Path(conf["template"]).read_text()


class Paid:
    # a provider stand-in behind the real response cache: every call that reaches it is paid (counted in a file)
    name = "paid"

    def __init__(self):
        self.n, self.lock = itertools.count(1), threading.Lock()

    def identity(self):
        return {"provider": "test", "name": "paid"}

    def complete(self, messages):
        with self.lock:
            i = next(self.n)
            with open(conf["counter"], "a") as f:
                f.write(f"{os.getpid()} {i}\\n")
        code = template.replace("{tag}", f"{os.getpid()}-{i}")
        return Completion(text=f"Rewrite solve.py.\\n\\n### File: solve.py\\n```python\\n{code}```\\n",
                          usage=Usage(tokens_in=10, tokens_out=10, usd=0.001))


if mode == "run":
    cfg = compose(conf["overrides"])
    run = build(cfg, run_dir)
    save_config(cfg, run_dir, conf["overrides"], run.task)
else:
    cfg, _ = load_run_config(run_dir, [])
    run = build(cfg, run_dir)
    check_task_unchanged(run_dir, run.task)
status = {"in_use_before": run.pool.in_use(), "free_before": run.pool.free(), "size": run.pool.size}
model = CachingModel(Paid(), run.cache)
run.models = {role: model for role in run.models}
run.run()
status.update(in_use_after=run.pool.in_use(), free_after=run.pool.free())
Path(conf["status"]).write_text(json.dumps(status))
"""


def test_sigkill_with_two_workers_then_resume(tmp_path):
    """Kill the runner while v_1 (a long node) runs and later nodes have finished; the resume keeps every
    finished node, redoes v_1 from the response cache (no model call paid twice), follows the decision log
    and finishes; the new process starts with an empty device pool."""
    plan = {"1": {"sleep": 2.5, "metric": 500}, "default": {"sleep": 0.3, "metric": 800}}
    run_dir, counter, status = tmp_path / "run", tmp_path / "paid.txt", tmp_path / "status.json"
    (tmp_path / "driver.py").write_text(DRIVER)
    (tmp_path / "solve_template.py").write_text(SOLVE)
    (tmp_path / "conf.json").write_text(json.dumps({
        "template": str(tmp_path / "solve_template.py"), "counter": str(counter), "status": str(status),
        "overrides": [*make_task(tmp_path, plan), "scaffold=aide", "executor.workers=2", "budget.max_nodes=6",
                      f"run_dir={run_dir}"]}))

    def driver(mode: str) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, str(tmp_path / "driver.py"), mode, str(run_dir),
                                 str(tmp_path / "conf.json")], cwd=str(REPO), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, env=dict(os.environ))

    proc = driver("run")
    journal, deadline = run_dir / "journal.jsonl", time.time() + 90
    while time.time() < deadline and proc.poll() is None:
        ev = read_events(journal) if journal.exists() else []
        finished = {e["node"] for e in ev if e["event"] == "node_finished"}
        running = {e["node"] for e in ev if e["event"] == "exec_started"} - finished
        if {2, 3} <= finished and 1 in running:
            break
        time.sleep(0.05)
    assert proc.poll() is None, proc.stdout.read().decode()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = read_events(journal)
    kept = {int(d.name[2:]) for d in (run_dir / "nodes").glob("v_*") if (d / "result.json").exists()}
    assert {0, 2, 3} <= kept and 1 not in kept and not status.exists()

    proc = driver("resume")
    out = proc.communicate(timeout=120)[0].decode()
    assert proc.returncode == 0, out
    st = json.loads(status.read_text())
    assert st["in_use_before"] == {} and st["free_before"] == st["size"] == 2  # the new runner's pool is empty
    assert st["in_use_after"] == {} and st["free_after"] == 2

    events = read_events(journal)
    tree = read_tree(run_dir)
    assert sorted(tree) == list(range(7)) and read_summary(run_dir)["status"] == "finished"
    assert_no_node_ran_twice(events)
    decisions = check_decision_log(events, tree, 6)
    logged_before = [e for e in before if e["event"] == "decision"]
    assert decisions[:len(logged_before)] == logged_before  # the resume logged no step twice
    assert any(e["event"] == "node_discarded" and e["node"] == 1 for e in events)
    # no call paid twice: every paid call is used by exactly one node of the final tree (its last attempt)
    final_calls: dict[int, list[dict]] = {}
    for e in events:
        if e["event"] == "node_started":
            final_calls[e["node"]] = []
        elif e["event"] == "llm_call":
            final_calls[e["node"]].append(e)
    paid = counter.read_text().splitlines()
    assert len(paid) == sum(len(c) for c in final_calls.values())
    assert [c["cached"] for c in final_calls[1]] == [True]  # v_1 made again from its stored answer
    assert sum(not e["cached"] for e in events if e["event"] == "llm_call") == len(paid)


# ---------------------------------------------------------------------- the device pool
def test_pool_slots_from_config():
    p = DevicePool.build(workers=1)
    assert p.size == 1 and not p.active and p.slots[0] == Slot(0, None, None, 1)
    p = DevicePool.build(workers=3, cpus=[0, 1, 2, 3, 4, 5], threads=2)
    assert p.active and [s.cpus for s in p.slots] == [(0, 1), (2, 3), (4, 5)]
    assert DevicePool.build(workers=1, cpus=[3], threads=2).slots[0].cpus == (3,)  # one worker: as before
    p = DevicePool.build(workers=2, devices=[0, 1, 2, 3], gpus_per_node=2)
    assert [s.gpus for s in p.slots] == [("0", "1"), ("2", "3")] and p.active
    assert p.slots[1].env() == {"SPEEDRUNNER_SLOT": "1", "CUDA_VISIBLE_DEVICES": "2,3"}
    p = DevicePool.build(workers=1, devices=2)
    assert p.active and [s.gpus for s in p.slots] == [("0",), ("1",)] and p.notes  # one slot idle
    p = DevicePool.build(workers=4, devices="[5,7]")
    assert [s.gpus for s in p.slots] == [("5",), ("7",)]  # four workers, two GPUs: nodes wait for a GPU
    assert DevicePool.from_config({"workers": 2, "cpus": [0, 1], "threads": 1}).slots[1].cpus == (1,)
    for bad in (dict(workers=0), dict(workers=2, cpus=[0, 1], threads=2), dict(workers=2, cpus=[0]),
                dict(devices=[0], gpus_per_node=2), dict(devices=[]), dict(devices=[1, 1])):
        with pytest.raises(UserError):
            DevicePool.build(**bad)


def test_gpu_detection(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,GPU-abc")
    assert detect_gpus() == ["2", "GPU-abc"]
    assert [s.gpus for s in DevicePool.build(workers=2, devices="auto").slots] == [("2",), ("GPU-abc",)]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    p = DevicePool.build(workers=2, devices="auto")  # no GPU: CPU slots, said in a note
    assert [s.gpus for s in p.slots] == [None, None] and "no GPU" in p.notes[0]


def test_pool_blocks_when_full_and_gives_back_on_exceptions():
    p = DevicePool.build(workers=2)
    a = p.acquire("a")
    with pytest.raises(ZeroDivisionError):
        with p.slot("b") as s:
            assert s.index == 1 and p.in_use() == {0: "a", 1: "b"}
            raise ZeroDivisionError
    assert p.in_use() == {0: "a"}
    b = p.acquire("b")
    with pytest.raises(TimeoutError):
        p.acquire("c", timeout=0.05)
    got = []
    t = threading.Thread(target=lambda: got.append(p.acquire("c")))
    t.start()
    time.sleep(0.1)
    assert not got
    p.release(a)
    t.join(2)
    assert got == [a] and p.in_use() == {0: "c", 1: "b"}
    p.release(b)
    p.release(got[0])
    assert p.in_use() == {} and p.peak == 2
    with pytest.raises(RuntimeError):
        p.release(b)


class _Rec:
    def __init__(self, cpus=None):
        self.cpus, self.seen = cpus, []

    def run(self, command, cwd, out_dir, timeout_s, env=None, hidden=None):
        self.seen.append((self.cpus, env))
        return ExecResult(exit_code=0, wall_s=0.0)


class _Wrap:
    def __init__(self, inner):
        self.inner = inner

    def run(self, command, cwd, out_dir, timeout_s, env=None, hidden=None, **kw):
        return self.inner.run(command, cwd=cwd, out_dir=out_dir, timeout_s=timeout_s, env=env, hidden=hidden, **kw)


def test_run_in_slot_pins_a_copy_and_passes_devices_in_env(tmp_path):
    inner = _Rec(cpus=[0, 1, 2, 3])
    ex = _Wrap(inner)  # a wrapper (like TorchrunExecutor) with **kwargs and the wrapped executor in .inner
    slot = Slot(1, gpus=("3",), cpus=(2, 3), threads=2)
    run_in_slot(ex, slot, ["true"], cwd=tmp_path, out_dir=tmp_path, timeout_s=1, env={"A": "1", "CUDA_VISIBLE_DEVICES": "9"})
    assert inner.seen == [([2, 3], {"A": "1", "CUDA_VISIBLE_DEVICES": "3", "SPEEDRUNNER_SLOT": "1",
                                   "SPEEDRUNNER_CPUS": "2,3"})]  # a pinned copy ran it; the pool's devices win
    assert inner.cpus == [0, 1, 2, 3] and ex.inner is inner  # the shared executors are untouched
    rec = _Rec(cpus=[7])
    run_in_slot(rec, slot, ["true"], cwd=tmp_path, out_dir=tmp_path, timeout_s=1, env={"A": "1"}, active=False)
    assert rec.seen == [([7], {"A": "1"})]  # inactive pool (one worker, no GPUs): the plain call
    assert pinned(object(), [1]) is None


# ---------------------------------------------------------------------- the response cache under concurrency
class _Counting:
    name = "counting"

    def __init__(self):
        self.calls = 0
        self._lock = threading.Lock()

    def identity(self):
        return {"provider": "test", "name": "counting"}

    def complete(self, messages):
        with self._lock:
            self.calls += 1
            n = self.calls
        time.sleep(0.01)
        return Completion(text=f"answer {n}", usage=Usage(tokens_in=1, tokens_out=1, usd=0.01))


def test_cache_occurrences_under_concurrent_calls_and_holes_on_resume(tmp_path):
    msgs = [{"role": "user", "content": "draft"}]
    m = CachingModel(_Counting(), ResponseCache(tmp_path / "c.sqlite"))
    out: list = []
    threads = [threading.Thread(target=lambda: out.append(m.complete(msgs))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(c.meta["occurrence"] for c in out) == list(range(8))  # eight distinct samples
    by_occ = {c.meta["occurrence"]: c for c in out}
    # a crash kept the nodes that used occurrences 1, 2 and 5; those of 0, 3, 4, 6, 7 are made again
    inner = _Counting()
    m2 = CachingModel(inner, ResponseCache(tmp_path / "c.sqlite"))
    m2.resume([{"cache_key": by_occ[i].meta["cache_key"], "occurrence": i, "cached": False} for i in (1, 2, 5)])
    again = [m2.complete(msgs) for _ in range(5)]
    assert [c.meta["occurrence"] for c in again] == [0, 3, 4, 6, 7] and all(c.meta["cached"] for c in again)
    assert inner.calls == 0  # nothing paid twice
    nxt = m2.complete(msgs)  # past the stored ones: a new call
    assert nxt.meta["occurrence"] == 8 and not nxt.meta["cached"] and inner.calls == 1
