"""Runaway node code: an infinite loop, a memory hog, a bounded fork storm, a daemon, a flood of output.

Each runs through LocalExecutor, with and without the namespace sandbox: it must be stopped within its
timeout + 5 s by the rule meant for it, with a reason that says which, and leave no process behind.
Processes are found from outside through /proc (the pids a node sees inside its PID namespace are not
the host's): every process a test starts carries a token in its environment and in its script's name.
A search whose nodes run wild must mark them buggy and go on to the next node.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import read_summary, read_tree, variant

from speedrunner.execution.local import LocalExecutor, filesystem_sandbox_available
from speedrunner.runner import build, compose

PY = sys.executable
SLACK_S = 5.0  # "killed within timeout + 5 s"
ENV = "TRUST_RUNAWAY"

INFINITE_LOOP = "while True:\n    pass\n"
# 64 MiB of written (so resident) pages at a time, up to 2 GiB; one line per chunk in mem.progress
MEMORY_HOG = ("import time\nblobs = []\nwhile len(blobs) < 32:\n    blobs.append(b'\\x01' * (64 << 20))\n"
              "    open('mem.progress', 'a').write('64\\n')\n    time.sleep(0.02)\ntime.sleep(600)\n")
# 8 children with 8 children each (72 processes), every one asleep; then the parent hangs
FORK_STORM = ("import os, time\n"
              "for _ in range(8):\n"
              "    if os.fork() == 0:\n"
              "        for _ in range(8):\n"
              "            if os.fork() == 0:\n"
              "                time.sleep(600)\n"
              "                os._exit(0)\n"
              "        time.sleep(600)\n"
              "        os._exit(0)\n"
              "time.sleep(600)\n")
# double fork + setsid + chdir / + stdio to /dev/null; the parent waits until the daemon is up, then exits
DAEMON = ("import os, time\n"
          "marker = os.path.abspath('daemon.started')\n"
          "if os.fork() == 0:\n"
          "    os.setsid()\n"
          "    if os.fork() == 0:\n"
          "        os.chdir('/')\n"
          "        null = os.open(os.devnull, os.O_RDWR)\n"
          "        for fd in (0, 1, 2):\n"
          "            os.dup2(null, fd)\n"
          "        open(marker, 'w').write('up')\n"
          "        while True:\n"
          "            time.sleep(0.05)\n"
          "    os._exit(0)\n"
          "while not os.path.exists(marker):\n"
          "    time.sleep(0.01)\n"
          "{tail}")
FLOOD = "import sys\nline = 'x' * 1023 + '\\n'\nwhile True:\n    sys.stdout.write(line)\n"

MODES = [pytest.param("auto", marks=pytest.mark.skipif(not filesystem_sandbox_available(),
                                                       reason="mount/PID namespaces are not available here")),
         "none"]


def live(token: str) -> list[int]:
    """Host pids of live processes (zombies are dead) that carry ``token`` in their environment or argv."""
    want_env, want_arg = f"{ENV}={token}".encode(), token.encode()
    found = []
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) == os.getpid():
            continue
        try:
            with open(f"/proc/{d}/stat", "rb") as f:
                stat = f.read()
            if stat[stat.rindex(b")") + 2:].split()[0] in (b"Z", b"X"):
                continue
            with open(f"/proc/{d}/environ", "rb") as f:
                env = f.read().split(b"\0")
            with open(f"/proc/{d}/cmdline", "rb") as f:
                argv = f.read()
        except (OSError, ValueError):
            continue
        if want_env in env or want_arg in argv:
            found.append(int(d))
    return found


def gone_by(token: str, deadline: float) -> list[int]:
    """Waits until no process carries ``token`` or ``deadline`` (monotonic) passes; the survivors."""
    while True:
        left = live(token)
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(0.05)


def kill_all(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


class Peak:
    """Samples, in a thread, how many of the token's processes are alive at most during a run."""

    def __init__(self, token: str):
        self.token, self.most, self._stop = token, 0, threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.most = max(self.most, len(live(self.token)))
            time.sleep(0.05)

    def __enter__(self) -> Peak:
        self._t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._t.join()


def run_wild(tmp_path: Path, body: str, sandbox: str, timeout_s: float, **limits):
    """Runs ``body`` under LocalExecutor and checks that none of its processes survives it; returns (result,
    seconds until it returned, most processes seen alive at once, workspace)."""
    token = secrets.token_hex(8)
    ws = tmp_path / "ws"
    ws.mkdir()
    name = f"runaway_{token}.py"
    (ws / name).write_text(body)
    ex = LocalExecutor(sandbox=sandbox, poll_s=0.02, **limits)
    with Peak(token) as peak:
        t0 = time.monotonic()
        res = ex.run([PY, name], cwd=ws, out_dir=tmp_path / "out", timeout_s=timeout_s, env={ENV: token})
        took = time.monotonic() - t0
        left = gone_by(token, t0 + timeout_s + SLACK_S)
    kill_all(left)  # do not leave a failed test's processes on a shared machine
    assert not left, f"processes outlived their node: {left}"
    return res, took, peak.most, ws


@pytest.mark.parametrize("sandbox", MODES)
def test_an_infinite_loop_is_stopped_at_the_timeout(tmp_path, sandbox):
    res, took, most, _ = run_wild(tmp_path, INFINITE_LOOP, sandbox, timeout_s=2)
    assert most >= 1
    assert res.timed_out and res.killed_reason == "timed out after 2 s" and res.exit_code != 0
    assert 2 <= took <= 2 + SLACK_S


@pytest.mark.parametrize("sandbox", MODES)
def test_a_memory_hog_is_stopped_at_the_memory_limit(tmp_path, sandbox):
    res, took, _, ws = run_wild(tmp_path, MEMORY_HOG, sandbox, timeout_s=30, memory_limit_mb=200)
    assert not res.timed_out and res.exit_code != 0
    assert res.killed_reason.startswith("memory limit exceeded: ") and res.killed_reason.endswith(" > 200 MiB")
    assert took < SLACK_S  # stopped by its own rule, long before the 30 s timeout
    allocated = 64 * len((ws / "mem.progress").read_text().split())
    # stopped when it is seen, not after a grace period in which it could go on allocating
    assert 0 < allocated <= 200 + 1024, allocated


@pytest.mark.parametrize("sandbox", MODES)
def test_a_fork_storm_dies_with_its_node(tmp_path, sandbox):
    res, took, most, _ = run_wild(tmp_path, FORK_STORM, sandbox, timeout_s=3)
    assert most >= 50, most  # the storm did happen
    assert res.timed_out and res.killed_reason == "timed out after 3 s"
    assert took <= 3 + SLACK_S


def test_a_daemon_dies_with_its_node_in_the_sandbox(tmp_path):
    if not filesystem_sandbox_available():
        pytest.skip("mount/PID namespaces are not available here")
    res, took, _, ws = run_wild(tmp_path, DAEMON.format(tail="print('parent done')\n"), "auto", timeout_s=1)
    assert (ws / "daemon.started").read_text() == "up"  # the daemon did run (and run_wild found it gone)
    assert res.exit_code == 0 and res.killed_reason is None and not res.timed_out
    assert took < SLACK_S


@pytest.mark.xfail(strict=True, reason="known limit (THREAT_MODEL.md, 'Escaping the timeout'): without the "
                   "PID namespace a process that calls setsid() leaves the group and outlives its node")
def test_a_daemon_dies_with_its_node_without_the_sandbox(tmp_path):
    run_wild(tmp_path, DAEMON.format(tail="print('parent done')\n"), "none", timeout_s=1)


@pytest.mark.parametrize("sandbox", MODES)
def test_a_flood_of_output_is_stopped_at_the_log_cap(tmp_path, sandbox):
    cap = 1 << 20
    res, took, _, _ = run_wild(tmp_path, FLOOD, sandbox, timeout_s=30, max_log_bytes=cap)
    assert res.killed_reason == f"log exceeded {cap} bytes" and not res.timed_out and res.exit_code != 0
    assert took < SLACK_S
    written = Path(res.stdout_path).stat().st_size + Path(res.stderr_path).stat().st_size
    # polled often and killed at once: the overshoot is what a tight loop writes in a few polls, not what
    # it writes in the 2 s grace a timed-out node gets (about a GB)
    assert cap < written < 64 * cap, written


def _reply(code: str) -> str:
    return f"### File: solve.py\n```python\n{code}```\n"


def test_a_search_marks_runaway_nodes_buggy_and_goes_on(tmp_path, fixed_collatz, script_file, monkeypatch):
    token = secrets.token_hex(8)
    monkeypatch.setenv(ENV, token)  # every node's processes inherit it: the survivors can be found
    answer = "print('answer: 77031 (chain length 351)')\nprint('runtime_ms: 900')\n"
    nodes = {
        "infinite_loop": (INFINITE_LOOP, "buggy", "timed out after 3 s"),
        "memory_hog": (MEMORY_HOG, "buggy", "memory limit exceeded: "),
        "fork_storm": (FORK_STORM, "buggy", "timed out after 3 s"),
        "flood": (FLOOD, "buggy", "log exceeded 1048576 bytes"),
    }
    if filesystem_sandbox_available():  # without the PID namespace a daemon escapes (known limit, above)
        nodes["daemon"] = (DAEMON.format(tail=answer), "valid", "")
    replies = [_reply(code) for code, _, _ in nodes.values()] + [variant(500)]
    # 1 GiB: the 73 forked interpreters of the storm count their shared pages once each (~330 MiB), and the
    # storm is meant to meet its timeout here, not the memory limit
    run_dir = tmp_path / "run"
    cfg = compose([*fixed_collatz, "scaffold=flat", "model=scripted", f"model.path={script_file(replies)}",
                   "coder=wholefile", f"budget.max_nodes={len(replies)}", f"run_dir={run_dir}", "reeval.runs=0",
                   "executor.timeout_s=3", "executor.memory_limit_mb=1024", "executor.max_log_bytes=1048576"])
    t0 = time.monotonic()
    build(cfg, run_dir).run()
    took = time.monotonic() - t0
    monkeypatch.delenv(ENV)
    left = gone_by(token, time.monotonic() + SLACK_S)
    kill_all(left)
    assert not left, f"processes outlived their nodes: {left}"

    tree = read_tree(run_dir)
    for i, (name, (_, status, reason)) in enumerate(nodes.items(), 1):
        result = json.loads((run_dir / "nodes" / f"v_{i}" / "result.json").read_text())
        assert result["status"] == status, (name, result["reason"])
        assert result["reason"].startswith(reason), (name, result["reason"])
        assert result["wall_s"] <= 3 + SLACK_S, (name, result["wall_s"])
    last = len(replies)
    assert tree[last]["status"] == "valid" and tree[last]["metric"] == 500
    s = read_summary(run_dir)
    assert s["status"] == "finished" and s["n_nodes"] == last and s["best_node"] == last
    assert took < 60, took
