"""Run a node's command on this machine, in its own process group, with a hard wall-clock timeout.

The sandbox, in order of strength:
- where the platform allows (Linux, root or user namespaces), the node runs in its own mount, PID and
  network namespaces: the whole filesystem is read-only except the node's own folder (so the run's
  records, the data, the harness and other nodes cannot be changed), a fresh /dev/shm, a /proc that
  shows only the node's processes (no reading the runner's environment), only loopback networking,
  and every process of the node dies with it, daemons included;
- the whole process group is killed at the timeout, when the logs grow past ``max_log_bytes`` or when
  the group's resident memory passes ``memory_limit_mb``; nothing a node starts outlives it;
- the environment is scrubbed of keys and provider variables; HOME and TMPDIR point inside the node;
- the network is cut (a new network namespace with only loopback) where the platform allows it;
- CPU time is measured: a node that used more cores than its ``threads`` is flagged, since its time
  would not be comparable.
Output goes straight to files, so a flood of output never blocks the runner.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from speedrunner.core.types import ExecResult

# Variables never handed to agent-written code: provider keys and anything that looks like a secret.
_SECRET = re.compile(r"(KEY|TOKEN|SECRET|PASSWORD|CREDENTIAL|_AUTH)", re.IGNORECASE)
_PROVIDER_PREFIXES = ("OPENAI", "ANTHROPIC", "GEMINI", "GOOGLE", "DEEPSEEK", "AZURE", "AWS", "LITELLM",
                      "HF_", "HUGGING", "MISTRAL", "COHERE", "TOGETHER", "GROQ", "OPENROUTER")
_NETNS_WRAPPER = ["unshare", "--net", "--", "sh", "-c", 'ip link set lo up 2>/dev/null; exec "$@"', "sh"]
_netns_ok: bool | None = None
_fs_ok: bool | None = None


def _sandbox_wrapper(writable: list[Path], network: bool, hidden: list[Path] = ()) -> list[str]:
    """unshare + a shell that makes / read-only except the ``writable`` folders and replaces each
    ``hidden`` file by an empty one (e.g. a held-out split), then execs the command."""
    binds = " && ".join(
        [f"mount --bind {shlex.quote(str(w))} {shlex.quote(str(w))}" for w in writable]
        + [f"mount --bind /dev/null {shlex.quote(str(h))}" for h in hidden if h.is_file()]
        + [f"mount -t tmpfs -o size=1m,ro tmpfs {shlex.quote(str(h))}" for h in hidden if h.is_dir()])
    script = ("mount --make-rprivate / && {binds} && mount --rbind / / && "
              "mount -o remount,bind,ro / && mount -t tmpfs -o size=1g tmpfs /dev/shm && cd \"$PWD\" "
              "|| {{ echo 'speedrunner sandbox: could not set up the mounts' >&2; exit 97; }}; "
              "{lo}exec \"$@\"").format(binds=binds, lo="" if network else "ip link set lo up 2>/dev/null; ")
    flags = ["--mount", "--pid", "--fork", "--mount-proc", "--kill-child"] + ([] if network else ["--net"])
    return ["unshare", *flags, "--", "sh", "-c", script, "sh"]


def filesystem_sandbox_available() -> bool:
    """Whether mount/PID/network namespaces with a read-only root work here. Checked once."""
    global _fs_ok
    if _fs_ok is None:
        if not sys.platform.startswith("linux") or shutil.which("unshare") is None:
            _fs_ok = False
        else:
            import tempfile

            with tempfile.TemporaryDirectory() as d:
                try:
                    r = subprocess.run([*_sandbox_wrapper([Path(d)], False), "sh", "-c", f"touch {shlex.quote(d)}/ok"],
                                       capture_output=True, timeout=20, cwd=d)
                    _fs_ok = r.returncode == 0 and (Path(d) / "ok").exists()
                except (OSError, subprocess.TimeoutExpired):
                    _fs_ok = False
    return _fs_ok


def scrubbed_env(base: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ if base is None else base)
    for k in list(env):
        if _SECRET.search(k) or k.upper().startswith(_PROVIDER_PREFIXES):
            del env[k]
    return env


def network_isolation_available() -> bool:
    """Whether ``unshare --net`` works here (root, or user namespaces allowed). Checked once."""
    global _netns_ok
    if _netns_ok is None:
        if not sys.platform.startswith("linux") or shutil.which("unshare") is None:
            _netns_ok = False
        else:
            try:
                r = subprocess.run(["unshare", "--net", "--", "true"], capture_output=True, timeout=10)
                _netns_ok = r.returncode == 0
            except (OSError, subprocess.TimeoutExpired):
                _netns_ok = False
    return _netns_ok


_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def group_stats(pgid: int) -> tuple[float, dict[int, float]]:
    """Resident memory (MiB) of every process in the group, and each one's CPU seconds so far
    (its own plus its reaped children's), from Linux /proc."""
    total_pages = 0
    cpu: dict[int, float] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return 0.0, cpu
    for name in entries:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read().decode(errors="replace")
            fields = stat[stat.rindex(")") + 2:].split()
            if int(fields[2]) == pgid:  # field 5 of stat: the process group
                total_pages += int(fields[21])  # field 24: rss in pages
                # fields 14-15: utime, stime (clock ticks); the children's fields would count them twice
                cpu[int(name)] = (int(fields[11]) + int(fields[12])) / _TICK
        except (OSError, ValueError, IndexError):
            continue
    return total_pages * os.sysconf("SC_PAGE_SIZE") / (1 << 20), cpu


@dataclass
class LocalExecutor:
    timeout_s: float | None = None  # overrides the task's timeout when set
    threads: int = 1
    max_log_bytes: int = 64 * 1024 * 1024
    memory_limit_mb: float | None = None  # resident memory of the node's process group
    network: bool = False  # False: cut the network where the platform allows it
    sandbox: str = "auto"  # auto: namespaces (read-only filesystem but for the node's folder) where possible; none
    cpu_tolerance: float = 1.5  # flag a node whose CPU time exceeds threads x wall x this (+1 s)
    cpus: list[int] | None = None  # pin the node to these CPU cores (sched_setaffinity); None: any core
    poll_s: float = 0.05
    kill_grace_s: float = 2.0
    notes: list[str] = field(default_factory=list)  # said once, e.g. "network isolation unavailable"

    def __post_init__(self) -> None:
        self.isolate = False
        self.fs_sandbox = self.sandbox == "auto" and filesystem_sandbox_available()
        if self.sandbox == "auto" and not self.fs_sandbox:
            self.notes.append("filesystem sandbox not available here (unshare --mount --pid failed): node code can "
                              "write outside its folder; protected files are still checked after each run")
        if not self.network and not self.fs_sandbox:
            self.isolate = network_isolation_available()
            if not self.isolate:
                self.notes.append("network isolation is not available on this machine (unshare --net failed); "
                                  "node code can reach the network")

    def run(self, command: list[str], cwd: Path, out_dir: Path, timeout_s: float,
            env: dict[str, str] | None = None, hidden: list[Path] | None = None) -> ExecResult:
        """``hidden``: files the node must not read (they look empty inside the sandbox)."""
        timeout = float(self.timeout_s or timeout_s)
        out_dir.mkdir(parents=True, exist_ok=True)
        home, tmp = out_dir / "home", out_dir / "tmp"
        home.mkdir(exist_ok=True)
        tmp.mkdir(exist_ok=True)
        full_env = scrubbed_env()
        n = str(self.threads)
        full_env.update(OMP_NUM_THREADS=n, MKL_NUM_THREADS=n, OPENBLAS_NUM_THREADS=n, SPEEDRUNNER_THREADS=n,
                        PYTHONUNBUFFERED="1", PYTHONDONTWRITEBYTECODE="1", HOME=str(home), TMPDIR=str(tmp),
                        XDG_CACHE_HOME=str(home / ".cache"))
        full_env.update(env or {})
        if self.fs_sandbox:
            writable = [out_dir.resolve()]
            if not Path(cwd).resolve().is_relative_to(writable[0]):
                writable.append(Path(cwd).resolve())
            argv = _sandbox_wrapper(writable, self.network, [Path(h) for h in hidden or []]) + list(command)
        elif self.isolate:
            argv = _NETNS_WRAPPER + list(command)
        else:
            argv = list(command)
        stdout_path, stderr_path = out_dir / "stdout.log", out_dir / "stderr.log"
        t0 = time.monotonic()
        with open(stdout_path, "wb") as fo, open(stderr_path, "wb") as fe:
            try:
                proc = subprocess.Popen(argv, cwd=cwd, env=full_env, stdout=fo, stderr=fe,
                                        stdin=subprocess.DEVNULL, start_new_session=True,
                                        preexec_fn=self._child_setup)
            except OSError as e:
                fe.write(f"cannot start {command[0]!r}: {e}\n".encode())
                return ExecResult(exit_code=127, wall_s=0.0, killed_reason=f"cannot start: {e}",
                                  stdout_path=str(stdout_path), stderr_path=str(stderr_path))
            reason, timed_out, status, usage = None, False, None, None
            peak_mb = 0.0
            seen_cpu: dict[int, float] = {}  # per process, the largest CPU time observed
            next_check = t0
            nap = 0.001  # adaptive: short runs end promptly, long ones are polled every poll_s
            while True:
                pid, st, ru = os.wait4(proc.pid, os.WNOHANG)
                if pid == proc.pid:
                    status, usage = st, ru
                    break
                now = time.monotonic()
                if now - t0 > timeout:
                    timed_out, reason = True, f"timed out after {timeout:g} s"
                    break
                # every poll: a flood writes hundreds of MB a second, so a quarter second is too long
                if _size(stdout_path) + _size(stderr_path) > self.max_log_bytes:
                    reason = f"log exceeded {self.max_log_bytes} bytes"
                    break
                if now >= next_check:
                    next_check = now + 0.25
                    rss, cpu = group_stats(proc.pid)
                    peak_mb = max(peak_mb, rss)
                    for pid_, c in cpu.items():
                        seen_cpu[pid_] = max(seen_cpu.get(pid_, 0.0), c)
                    if self.memory_limit_mb:
                        if rss > self.memory_limit_mb:
                            reason = f"memory limit exceeded: {rss:.0f} MiB > {self.memory_limit_mb:g} MiB"
                            break
                time.sleep(nap)
                nap = min(nap * 2, self.poll_s)
            if reason is not None:
                # a slow node gets its grace; a node still flooding or allocating is stopped at once (in the
                # sandbox SIGTERM never reaches it, so a grace would give it kill_grace_s more to run wild)
                status, usage = _kill_group(proc, self.kill_grace_s if timed_out else 0.0)
            else:
                _kill_leftovers(proc.pid)
            wall = time.monotonic() - t0
        proc.returncode = os.waitstatus_to_exitcode(status) if status is not None else -signal.SIGKILL
        # children that were never reaped by the leader are missing from its rusage: take the larger measure
        own = (usage.ru_utime + usage.ru_stime) if usage is not None else 0.0
        cpu_s = max(own, sum(seen_cpu.values())) if (usage is not None or seen_cpu) else None
        violation = None
        if cpu_s is not None and reason is None and cpu_s > self.threads * wall * self.cpu_tolerance + 1.0:
            violation = (f"used {cpu_s:.1f} CPU-seconds in {wall:.1f} s with {self.threads} thread(s) allowed: "
                         "it ran more threads than the task gives it")
        return ExecResult(exit_code=proc.returncode, wall_s=wall, timed_out=timed_out, killed_reason=reason,
                          stdout_path=str(stdout_path), stderr_path=str(stderr_path), cpu_s=cpu_s,
                          max_rss_mb=(usage.ru_maxrss / 1024) if usage is not None else peak_mb or None,
                          violation=violation)


    def _child_setup(self) -> None:  # runs in the child between fork and exec
        _die_with_parent()
        if self.cpus:
            os.sched_setaffinity(0, set(self.cpus))


_PR_SET_PDEATHSIG = 1


def _load_prctl():
    """libc's prctl, looked up once in the runner (a forked child should not have to load a library)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


_PRCTL = _load_prctl()


def _die_with_parent() -> None:
    """Ask the kernel to SIGKILL this process when the runner that started it dies (even by SIGKILL), so a
    crashed runner leaves no training run behind (the namespace sandbox then takes the rest with it)."""
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _size(p: Path) -> int:
    try:
        return p.stat().st_size
    except FileNotFoundError:
        return 0


def _kill_group(proc: subprocess.Popen, grace_s: float):
    """SIGTERM, then SIGKILL, the whole group; reap the leader. Returns its wait status and rusage."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        pass
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        pid, st, ru = os.wait4(proc.pid, os.WNOHANG)
        if pid == proc.pid:
            _kill_leftovers(proc.pid)
            return st, ru
        time.sleep(0.02)
    _kill_leftovers(proc.pid)
    _, st, ru = os.wait4(proc.pid, 0)
    return st, ru


def _kill_leftovers(pgid: int) -> None:
    """Whatever is left of the group (children that outlived their parent) is killed."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
