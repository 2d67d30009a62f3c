"""Run a node's command on this machine, in its own process group, with a hard wall-clock timeout.

The whole group is killed at the timeout or when a log grows past ``max_log_bytes``, so nothing a
node starts outlives it. Output goes straight to files, so a flood of output never blocks the runner.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from speedrunner.core.types import ExecResult

# Variables never handed to agent-written code: provider keys and anything that looks like a secret.
_SECRET = re.compile(r"(KEY|TOKEN|SECRET|PASSWORD|CREDENTIAL|_AUTH)", re.IGNORECASE)
_PROVIDER_PREFIXES = ("OPENAI", "ANTHROPIC", "GEMINI", "GOOGLE", "DEEPSEEK", "AZURE", "AWS", "LITELLM",
                      "HF_", "HUGGING", "MISTRAL", "COHERE", "TOGETHER", "GROQ", "OPENROUTER")


def scrubbed_env(base: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ if base is None else base)
    for k in list(env):
        if _SECRET.search(k) or k.upper().startswith(_PROVIDER_PREFIXES):
            del env[k]
    return env


@dataclass
class LocalExecutor:
    timeout_s: float | None = None  # overrides the task's timeout when set
    threads: int = 1
    max_log_bytes: int = 64 * 1024 * 1024
    poll_s: float = 0.05
    kill_grace_s: float = 2.0

    def run(self, command: list[str], cwd: Path, out_dir: Path, timeout_s: float,
            env: dict[str, str] | None = None) -> ExecResult:
        timeout = float(self.timeout_s or timeout_s)
        full_env = scrubbed_env()
        n = str(self.threads)
        full_env.update(OMP_NUM_THREADS=n, MKL_NUM_THREADS=n, OPENBLAS_NUM_THREADS=n, SPEEDRUNNER_THREADS=n,
                        PYTHONUNBUFFERED="1", PYTHONDONTWRITEBYTECODE="1")
        full_env.update(env or {})
        out_dir.mkdir(parents=True, exist_ok=True)
        stdout_path, stderr_path = out_dir / "stdout.log", out_dir / "stderr.log"
        t0 = time.monotonic()
        with open(stdout_path, "wb") as fo, open(stderr_path, "wb") as fe:
            try:
                proc = subprocess.Popen(command, cwd=cwd, env=full_env, stdout=fo, stderr=fe,
                                        stdin=subprocess.DEVNULL, start_new_session=True)
            except OSError as e:
                fe.write(f"cannot start {command[0]!r}: {e}\n".encode())
                return ExecResult(exit_code=127, wall_s=0.0, killed_reason=f"cannot start: {e}",
                                  stdout_path=str(stdout_path), stderr_path=str(stderr_path))
            reason = None
            timed_out = False
            next_size_check = t0
            while True:
                try:
                    proc.wait(timeout=self.poll_s)
                    break
                except subprocess.TimeoutExpired:
                    pass
                now = time.monotonic()
                if now - t0 > timeout:
                    timed_out, reason = True, f"timed out after {timeout:g} s"
                    break
                if now >= next_size_check:
                    next_size_check = now + 0.5
                    size = _size(stdout_path) + _size(stderr_path)
                    if size > self.max_log_bytes:
                        reason = f"log exceeded {self.max_log_bytes} bytes"
                        break
            if reason is not None:
                _kill_group(proc, self.kill_grace_s)
            else:
                _kill_group(proc, 0.0, only_leftovers=True)
            wall = time.monotonic() - t0
        return ExecResult(exit_code=proc.returncode, wall_s=wall, timed_out=timed_out, killed_reason=reason,
                          stdout_path=str(stdout_path), stderr_path=str(stderr_path))


def _size(p: Path) -> int:
    try:
        return p.stat().st_size
    except FileNotFoundError:
        return 0


def _kill_group(proc: subprocess.Popen, grace_s: float, only_leftovers: bool = False) -> None:
    """SIGTERM then SIGKILL the process group (the leader may already be gone; its children may not)."""
    try:
        pgid = proc.pid  # start_new_session makes the child the leader of a group with its own pid
        if not only_leftovers:
            os.killpg(pgid, signal.SIGTERM)
            try:
                proc.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                pass
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    except PermissionError:
        pass
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass
