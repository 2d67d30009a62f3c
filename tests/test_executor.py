"""The local executor: exit status, hard timeout over the whole process group, log cap, clean env."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest

from speedrunner.execution.local import LocalExecutor, scrubbed_env

PY = sys.executable


def script(tmp_path: Path, body: str, name: str = "job.py") -> list[str]:
    (tmp_path / name).write_text(body)
    return [PY, name]


def run(tmp_path: Path, body: str, timeout_s: float = 10.0, **kw):
    env = kw.pop("env", None)
    ex = LocalExecutor(kill_grace_s=kw.pop("kill_grace_s", 0.3), poll_s=0.02, **kw)
    out = tmp_path / "out"
    return ex.run(script(tmp_path, body), cwd=tmp_path, out_dir=out, timeout_s=timeout_s, env=env), out


def alive(pid: int) -> bool:
    """True while ``pid`` is a live process (a zombie waiting to be reaped counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state not in ("Z", "X")


def pids_with_arg(token: str) -> list[int]:
    """Live processes whose command line carries ``token``. The node may run in its own PID namespace,
    where the pid it sees for its child is not the pid this test sees, so processes are found by a
    marker on their command line instead."""
    found = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == os.getpid():
            continue
        try:
            argv = (d / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if token.encode() in argv and alive(int(d.name)):
            found.append(int(d.name))
    return found


def wait_gone(token: str, within_s: float = 3.0) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if not pids_with_arg(token):
            return True
        time.sleep(0.02)
    return not pids_with_arg(token)


def kill_if_alive(token: str) -> None:
    for pid in pids_with_arg(token):
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass


def sleeper_token() -> str:
    return f"speedrunner-test-sleeper-{os.getpid()}-{time.monotonic_ns()}"


def spawn_grandchild(token: str) -> str:
    """A node body that starts a 60 s sleeper marked with ``token`` and records that it started."""
    return ("import subprocess, sys, time\n"
            f"child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)', {token!r}])\n"
            "open('grandchild.pid', 'w').write(str(child.pid))\n"
            "print('spawned', child.pid, flush=True)\n")


def test_exit_code_and_logs_are_captured(tmp_path):
    res, out = run(tmp_path, "import sys\nprint('hello out')\nprint('hello err', file=sys.stderr)\nsys.exit(3)\n")
    assert res.exit_code == 3
    assert not res.timed_out and res.killed_reason is None
    assert Path(res.stdout_path) == out / "stdout.log" and Path(res.stderr_path) == out / "stderr.log"
    assert (out / "stdout.log").read_text() == "hello out\n"
    assert (out / "stderr.log").read_text() == "hello err\n"
    assert 0 < res.wall_s < 5


def test_success_and_crash(tmp_path):
    res, _ = run(tmp_path, "print('ok')\n")
    assert res.exit_code == 0
    res, out = run(tmp_path, "raise RuntimeError('kaboom')\n")
    assert res.exit_code == 1
    assert "RuntimeError: kaboom" in (out / "stderr.log").read_text()


def test_runs_in_the_given_folder(tmp_path):
    res, out = run(tmp_path, "import os\nprint(os.getcwd())\nopen('made_here.txt', 'w').write('x')\n")
    assert res.exit_code == 0
    assert (out / "stdout.log").read_text().strip() == str(tmp_path)
    assert (tmp_path / "made_here.txt").is_file()


def test_hanging_script_and_its_children_are_killed_at_the_timeout(tmp_path):
    token = sleeper_token()
    body = spawn_grandchild(token) + "time.sleep(60)\n"
    t0 = time.monotonic()
    res, out = run(tmp_path, body, timeout_s=1.0)
    took = time.monotonic() - t0
    assert (tmp_path / "grandchild.pid").is_file(), "the node never started its child"
    try:
        assert res.timed_out
        assert res.killed_reason and "timed out" in res.killed_reason
        assert res.exit_code != 0
        assert 0.9 <= res.wall_s < 4
        assert took < 5
        assert wait_gone(token), f"the grandchild {pids_with_arg(token)} outlived its node"
    finally:
        kill_if_alive(token)


def test_script_that_ignores_sigterm_is_killed(tmp_path):
    body = "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nprint('ready', flush=True)\ntime.sleep(60)\n"
    t0 = time.monotonic()
    res, _ = run(tmp_path, body, timeout_s=0.8, kill_grace_s=0.3)
    assert res.timed_out
    assert time.monotonic() - t0 < 4


def test_children_left_behind_by_a_finished_script_are_killed(tmp_path):
    """A script that exits 0 but leaves a background process: nothing a node starts outlives it."""
    token = sleeper_token()
    res, out = run(tmp_path, spawn_grandchild(token))
    assert (tmp_path / "grandchild.pid").is_file(), "the node never started its child"
    try:
        assert res.exit_code == 0 and not res.timed_out
        assert wait_gone(token), f"the grandchild {pids_with_arg(token)} outlived its node"
    finally:
        kill_if_alive(token)


def test_script_that_floods_output_is_killed_at_max_log_bytes(tmp_path):
    # writes ~8 MB quickly, then would hang: only the log cap can stop it before the timeout
    body = ("import sys, time\nline = 'x' * 1023 + '\\n'\nfor _ in range(8192):\n    sys.stdout.write(line)\n"
            "sys.stdout.flush()\ntime.sleep(60)\n")
    t0 = time.monotonic()
    res, out = run(tmp_path, body, timeout_s=20.0, max_log_bytes=256 * 1024)
    assert res.killed_reason is not None and "log exceeded" in res.killed_reason
    assert "262144" in res.killed_reason
    assert not res.timed_out
    assert res.exit_code != 0
    assert time.monotonic() - t0 < 5


def test_missing_program_is_exit_127(tmp_path):
    ex = LocalExecutor()
    res = ex.run(["definitely-not-a-program-xyz"], cwd=tmp_path, out_dir=tmp_path / "o", timeout_s=5)
    assert res.exit_code == 127
    assert "definitely-not-a-program-xyz" in (tmp_path / "o" / "stderr.log").read_text()


def test_executor_timeout_overrides_the_task_timeout(tmp_path):
    ex = LocalExecutor(timeout_s=0.5, kill_grace_s=0.2, poll_s=0.02)
    t0 = time.monotonic()
    res = ex.run(script(tmp_path, "import time\ntime.sleep(30)\n"), cwd=tmp_path, out_dir=tmp_path / "o",
                 timeout_s=60)
    assert res.timed_out and time.monotonic() - t0 < 3


ENV_DUMP = "import json, os\nprint(json.dumps(dict(os.environ)))\n"


def test_env_is_scrubbed_of_secrets_and_keeps_path(tmp_path, monkeypatch):
    secrets = {
        "OPENAI_API_KEY": "sk-1", "ANTHROPIC_API_KEY": "sk-2", "GEMINI_API_KEY": "g", "OPENROUTER_API_KEY": "o",
        "HF_TOKEN": "hf", "AWS_SECRET_ACCESS_KEY": "aws", "MY_SERVICE_TOKEN": "t", "DB_PASSWORD": "pw",
        "GITHUB_TOKEN": "gh", "some_api_key": "lower", "OPENAI_BASE_URL": "http://x",
    }
    for k, v in secrets.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("SPEEDRUNNER_HARMLESS", "kept")
    res, out = run(tmp_path, ENV_DUMP, threads=3)
    assert res.exit_code == 0
    env = json.loads((out / "stdout.log").read_text())
    leaked = sorted(set(secrets) & set(env))
    assert not leaked, f"secrets reached the node: {leaked}"
    assert env["PATH"] == os.environ["PATH"]
    assert env["SPEEDRUNNER_HARMLESS"] == "kept"
    assert env["SPEEDRUNNER_THREADS"] == "3"
    assert env["OMP_NUM_THREADS"] == "3" and env["MKL_NUM_THREADS"] == "3"
    assert env["PYTHONUNBUFFERED"] == "1"


def test_task_env_is_passed_and_wins(tmp_path):
    res, out = run(tmp_path, ENV_DUMP, env={"TASK_SEED": "7", "OMP_NUM_THREADS": "2"})
    env = json.loads((out / "stdout.log").read_text())
    assert env["TASK_SEED"] == "7"
    assert env["OMP_NUM_THREADS"] == "2"
    assert env["SPEEDRUNNER_THREADS"] == "1"


def test_scrubbed_env_function():
    base = {"PATH": "/bin", "HOME": "/root", "OPENAI_API_KEY": "x", "ANTHROPIC_AUTH_TOKEN": "y",
            "LANG": "C.UTF-8", "MY_SECRET": "z", "AZURE_OPENAI_ENDPOINT": "e"}
    assert scrubbed_env(base) == {"PATH": "/bin", "HOME": "/root", "LANG": "C.UTF-8"}
    assert "OPENAI_API_KEY" in base  # the input is left alone


@pytest.mark.parametrize("threads", [1, 4])
def test_speedrunner_threads_follows_the_setting(tmp_path, threads):
    res, out = run(tmp_path, "import os\nprint(os.environ['SPEEDRUNNER_THREADS'])\n", threads=threads)
    assert (out / "stdout.log").read_text().strip() == str(threads)


# ---------------------------------------------------------------------------------------------- sandbox


def test_memory_limit_kills_the_group(tmp_path):
    body = "import time\nblob = bytearray(400 * 1024 * 1024)\nfor i in range(0, len(blob), 4096):\n" \
           "    blob[i] = 1\ntime.sleep(30)\n"
    ex, _ = run(tmp_path, body, timeout_s=20, memory_limit_mb=200)
    assert ex.killed_reason and "memory limit exceeded" in ex.killed_reason
    assert ex.wall_s < 15


def test_cpu_time_of_worker_processes_is_counted(tmp_path):
    """Two worker processes each do a fixed amount of CPU work: their time is counted whatever the load."""
    body = ("import multiprocessing as mp, time\n"
            "def work(_):\n    t = time.process_time()\n    while time.process_time() - t < 1.0: pass\n"
            "if __name__ == '__main__':\n    with mp.Pool(2) as p:\n        p.map(work, range(2))\n")
    ex, _ = run(tmp_path, body, timeout_s=60, threads=1)
    assert ex.exit_code == 0
    assert ex.cpu_s is not None and ex.cpu_s >= 1.6, ex.cpu_s


def test_using_more_cpu_than_the_threads_allow_is_flagged(tmp_path):
    """CPU time above threads x wall x tolerance (+1 s) is a violation; a tight tolerance makes a plain
    single-threaded busy loop cross it, which checks the rule without needing two idle cores."""
    body = "import time\nt = time.process_time()\nwhile time.process_time() - t < 2.5: pass\n"
    ex, _ = run(tmp_path, body, timeout_s=60, threads=1, cpu_tolerance=0.05)
    assert ex.exit_code == 0
    assert ex.violation and "thread(s) allowed" in ex.violation, (ex.cpu_s, ex.wall_s)


def test_single_threaded_work_is_not_flagged(tmp_path):
    body = "import time\nt = time.time()\nwhile time.time() - t < 1.0: pass\n"
    ex, _ = run(tmp_path, body, timeout_s=30, threads=1)
    assert ex.violation is None and ex.cpu_s is not None and ex.cpu_s > 0.5


def test_network_is_cut_where_possible(tmp_path):
    from speedrunner.execution.local import network_isolation_available

    if not network_isolation_available():
        pytest.skip("unshare --net is not available here")
    body = ("import socket\n"
            "try:\n    socket.create_connection(('1.1.1.1', 53), timeout=2)\n    print('NET: reached')\n"
            "except OSError as e:\n    print('NET: blocked', e)\n"
            "s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen()\n"
            "c = socket.create_connection(s.getsockname()); print('LOOPBACK: ok')\n")
    ex, out = run(tmp_path, body, timeout_s=20)
    text = (out / "stdout.log").read_text()
    assert "NET: blocked" in text and "LOOPBACK: ok" in text


def test_home_and_tmp_are_inside_the_node(tmp_path):
    body = "import os, tempfile\nprint('HOME=' + os.environ['HOME'])\nprint('TMP=' + tempfile.gettempdir())\n"
    ex, out = run(tmp_path, body)
    text = (out / "stdout.log").read_text()
    home = text.split("HOME=")[1].splitlines()[0]
    tmp = text.split("TMP=")[1].splitlines()[0]
    assert Path(home).is_dir() and Path(home).is_relative_to(out)
    assert Path(tmp).is_relative_to(out)


def test_pinned_to_the_given_cores(tmp_path):
    body = "import os\nprint('CPUS=' + ','.join(map(str, sorted(os.sched_getaffinity(0)))))\n"
    ex, out = run(tmp_path, body, cpus=[0])
    assert ex.exit_code == 0 and "CPUS=0" in (out / "stdout.log").read_text()


def _need_fs_sandbox():
    from speedrunner.execution.local import filesystem_sandbox_available

    if not filesystem_sandbox_available():
        pytest.skip("mount/PID namespaces are not available here")


def test_sandbox_allows_writes_only_in_the_node_folder(tmp_path):
    _need_fs_sandbox()
    outside = tmp_path / "run_record.json"
    outside.write_text("{}")
    body = ("import os\n"
            f"for p in [{str(outside)!r}, 'mine.txt', os.environ['HOME'] + '/x', '/dev/shm/x']:\n"
            "    try:\n        open(p, 'a').write('x'); print('WROTE', p)\n"
            "    except OSError as e:\n        print('REFUSED', p)\n")
    ws = tmp_path / "node" / "workspace"
    ws.mkdir(parents=True)
    (ws / "job.py").write_text(body)
    ex = LocalExecutor(kill_grace_s=0.3)
    res = ex.run([PY, "job.py"], cwd=ws, out_dir=tmp_path / "node", timeout_s=30)
    text = (tmp_path / "node" / "stdout.log").read_text()
    assert res.exit_code == 0, (tmp_path / "node" / "stderr.log").read_text()
    assert f"REFUSED {outside}" in text and outside.read_text() == "{}"
    assert "WROTE mine.txt" in text and "WROTE /dev/shm/x" in text
    assert not os.path.exists("/dev/shm/x")  # a private /dev/shm


def test_sandbox_kills_daemons_and_hides_the_runner(tmp_path):
    _need_fs_sandbox()
    (tmp_path / "daemon.py").write_text("import os, time\nos.setsid()\ntime.sleep(60)\n")
    body = ("import os, subprocess, sys, time\n"
            "subprocess.Popen([sys.executable, 'daemon.py'], start_new_session=True)\n"
            "time.sleep(0.5)\n"
            "print('PROCS', sorted(int(d) for d in os.listdir('/proc') if d.isdigit()))\n"
            "try:\n    print('PARENT_ENV', open(f'/proc/{os.getppid()}/environ').read()[:20])\n"
            "except OSError as e:\n    print('NO_PARENT_ENV')\n")
    ex, out = run(tmp_path, body, timeout_s=30)
    text = (out / "stdout.log").read_text()
    assert ex.exit_code == 0, (out / "stderr.log").read_text()
    assert "PARENT_ENV" not in text.replace("NO_PARENT_ENV", "")
    procs = [int(x) for x in text.split("PROCS [", 1)[1].split("]", 1)[0].split(",")]
    assert len(procs) <= 3, procs  # the node sees only its own processes (itself and the daemon)
    time.sleep(0.5)
    daemon = str(tmp_path / "daemon.py")
    leftovers = [d for d in os.listdir("/proc") if d.isdigit() and "daemon.py" in _cmd(d)
                 and os.path.exists(f"/proc/{d}/cwd") and str(tmp_path) in os.path.realpath(f"/proc/{d}/cwd")]
    assert not leftovers, (leftovers, daemon)


def _cmd(pid: str) -> str:
    try:
        return open(f"/proc/{pid}/cmdline", "rb").read().decode(errors="replace")
    except OSError:
        return ""


def test_hidden_files_read_as_empty_in_the_sandbox(tmp_path):
    _need_fs_sandbox()
    secret = tmp_path / "test.bin"
    secret.write_bytes(b"held-out tokens")
    body = f"print('GOT', repr(open({str(secret)!r}, 'rb').read()))\n"
    ex = LocalExecutor(kill_grace_s=0.3)
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "job.py").write_text(body)
    ex.run([PY, "job.py"], cwd=tmp_path / "w", out_dir=tmp_path / "w", timeout_s=30, hidden=[secret])
    assert "GOT b''" in (tmp_path / "w" / "stdout.log").read_text()
    assert secret.read_bytes() == b"held-out tokens"


def test_a_node_dies_with_its_runner(tmp_path):
    """SIGKILL the process that runs the executor: its node must not keep running."""
    import signal
    import subprocess

    marker = tmp_path / "node.pid"
    runner = tmp_path / "runner.py"
    runner.write_text(
        "import sys\nfrom pathlib import Path\nfrom speedrunner.execution.local import LocalExecutor\n"
        f"w = Path({str(tmp_path)!r})\n"
        f"(w / 'job.py').write_text('import os, time\\nopen(\"node.pid\", \"w\").write(str(os.getpid()))\\n"
        "time.sleep(60)\\n')\n"
        "LocalExecutor().run([sys.executable, 'job.py'], cwd=w, out_dir=w / 'out', timeout_s=120)\n")
    proc = subprocess.Popen([PY, str(runner)])
    deadline = time.time() + 20
    while not marker.exists() and time.time() < deadline:
        time.sleep(0.05)
    assert marker.exists()
    time.sleep(0.2)
    before = [d for d in os.listdir("/proc") if d.isdigit() and "job.py" in _cmd(d) and str(tmp_path) in
              os.path.realpath(f"/proc/{d}/cwd")]
    assert before, "the node should be running"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    time.sleep(1.0)
    after = [d for d in before if os.path.exists(f"/proc/{d}") and "job.py" in _cmd(d)]
    assert not after, after
