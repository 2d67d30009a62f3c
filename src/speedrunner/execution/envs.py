"""Per-task Python environments: a virtual environment per set of requirements, built once and cached.

A task that lists pip requirements (``requirements: {pip: ["six==1.16.0"]}`` in task.yaml) runs its
nodes in a virtual environment made for exactly that list:

- **Where.** ``<envs_dir>/<hash>/``; ``envs_dir`` is ``executor.envs_dir``, else ``$SPEEDRUNNER_ENVS``,
  else ``$SPEEDRUNNER_CACHE/envs``, else ``~/.cache/speedrunner/envs``. The hash covers the sorted
  requirement list, ``inherit``, and the interpreter (its real path and version). Under Slurm the folder
  must be on a filesystem the compute nodes share.
- **Once.** The build holds ``<hash>.lock`` (``fcntl.flock``): a second worker or a second run that needs
  the same environment waits for the first build and then uses it. A finished build is marked by
  ``<hash>/.speedrunner-env.json``; a folder without that mark (a build cut off) is removed and built again.
- **How.** ``python -m venv --without-pip``, then this interpreter's pip installs into it
  (``pip --python ENV/bin/python install ...``); the installer's output goes to ``<hash>.log``. With
  ``inherit: true`` (the default) the environment also sees the packages of the environment speedrunner
  runs in (torch, numpy, ...), after its own, so a task lists only what it adds or pins differently.
- **Running in it.** The command's interpreter, when it is the harness's (``{python}``), becomes the
  environment's python; ``PATH`` starts with ``ENV/bin`` (so a bare ``python`` is the environment's too)
  and ``VIRTUAL_ENV`` is set. The task's own ``env`` still wins.
- **Failure.** A failed build ends the node as ``buggy`` with the installer's last lines as its reason
  (``stderr.log`` of the node holds them, ``env_build.log`` the whole output), and the run goes on. The
  failure is recorded as ``<hash>.failed.json``; later nodes of the same session (any executor created
  before the failure was recorded) reuse it instead of building again, so one bad requirement costs one
  build per session, not one per node. A new session (``speedrunner resume``, another run) tries again,
  since a registry outage is not the task's fault.

Tasks without pip requirements (all built-in tasks, nanogpt_mini included) run in speedrunner's own
environment and nothing is built.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import site
import subprocess
import sys
import sysconfig
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from speedrunner.core.types import ExecResult

OK_MARK = ".speedrunner-env.json"
TAIL = 12


@dataclass(frozen=True)
class EnvSpec:
    pip: tuple[str, ...]
    inherit: bool = True

    @classmethod
    def from_requirements(cls, req: dict[str, Any] | None) -> EnvSpec | None:
        """The environment a task's ``requirements`` mapping asks for; None when it lists no pip packages
        (the other keys, such as ``torch`` or ``gpus``, are informative)."""
        pip = [str(p).strip() for p in (req or {}).get("pip") or [] if str(p).strip()]
        if not pip:
            return None
        return cls(pip=tuple(sorted(set(pip))), inherit=bool((req or {}).get("inherit", True)))

    def key(self) -> str:
        ident = {"pip": list(self.pip), "inherit": self.inherit, "python": os.path.realpath(sys.executable),
                 "version": sys.version, "base": _base_site_dirs() if self.inherit else []}
        return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]


class EnvBuildError(Exception):
    def __init__(self, message: str, tail: str, reused: bool = False, log: Path | None = None):
        super().__init__(message)
        self.tail, self.reused, self.log = tail, reused, log


def envs_root(configured: str | os.PathLike | None = None) -> Path:
    if configured:
        return Path(configured).expanduser()
    if os.environ.get("SPEEDRUNNER_ENVS"):
        return Path(os.environ["SPEEDRUNNER_ENVS"]).expanduser()
    cache = Path(os.environ.get("SPEEDRUNNER_CACHE") or Path.home() / ".cache" / "speedrunner").expanduser()
    return cache / "envs"


def _base_site_dirs() -> list[str]:
    dirs = [*site.getsitepackages(), sysconfig.get_paths()["purelib"]]
    out: list[str] = []
    for d in dirs:
        if d not in out and Path(d).is_dir():
            out.append(d)
    return out


def env_python(path: Path) -> Path:
    return path / "bin" / "python"


def _tail(text: str, n: int = TAIL) -> str:
    return "\n".join(text.rstrip().splitlines()[-n:])


def ensure_env(spec: EnvSpec, root: Path, timeout_s: float = 1800.0, reuse_failures_since: float | None = None,
               on_event: Callable[..., None] | None = None) -> Path:
    """The environment's folder, built first if needed. Raises EnvBuildError when it cannot be built (or
    when a failure recorded at or after ``reuse_failures_since`` exists)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    h = spec.key()
    path, failed, log = root / h, root / f"{h}.failed.json", root / f"{h}.log"
    with open(root / f"{h}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # waits while another worker builds the same environment
        if (path / OK_MARK).is_file():
            return path
        if failed.is_file() and reuse_failures_since is not None and failed.stat().st_mtime >= reuse_failures_since:
            rec = json.loads(failed.read_text())
            raise EnvBuildError(rec.get("message", "the environment could not be built"), rec.get("tail", ""),
                                reused=True, log=log)
        if path.exists():
            shutil.rmtree(path)  # a build that was cut off
        t0 = time.monotonic()
        if on_event:
            on_event("env_build_started", env=h, pip=list(spec.pip), path=str(path))
        try:
            text = _build(spec, path, log, timeout_s)
        except EnvBuildError as e:
            failed.write_text(json.dumps({"message": str(e), "tail": e.tail, "pip": list(spec.pip),
                                          "time": time.time()}, indent=1) + "\n")
            shutil.rmtree(path, ignore_errors=True)
            if on_event:
                on_event("env_build_failed", env=h, reason=str(e))
            raise
        failed.unlink(missing_ok=True)
        (path / OK_MARK).write_text(json.dumps({"pip": list(spec.pip), "inherit": spec.inherit,
                                                "python": sys.version, "built": time.time(),
                                                "build_s": round(time.monotonic() - t0, 2),
                                                "freeze": text}, indent=1) + "\n")
        if on_event:
            on_event("env_built", env=h, path=str(path), build_s=round(time.monotonic() - t0, 2))
        return path


def _build(spec: EnvSpec, path: Path, log: Path, timeout_s: float) -> str:
    with open(log, "w") as out:
        def step(argv: list[str], what: str) -> None:
            out.write(f"$ {' '.join(argv)}\n")
            out.flush()
            try:
                r = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   timeout=timeout_s, env={**os.environ, "PIP_NO_INPUT": "1",
                                                           "PIP_DISABLE_PIP_VERSION_CHECK": "1"})
                code = r.returncode
            except subprocess.TimeoutExpired:
                out.write(f"\n{what} timed out after {timeout_s:g} s\n")
                code = -1
            except OSError as e:
                out.write(f"\n{what} could not start: {e}\n")
                code = -1
            if code != 0:
                out.flush()
                raise EnvBuildError(f"the task's environment could not be built: {what} failed "
                                    f"({' '.join(spec.pip)})", _tail(log.read_text(errors="replace")), log=log)

        step([sys.executable, "-m", "venv", "--without-pip", str(path)], "venv")
        if spec.inherit:
            purelib = path / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
            purelib.mkdir(parents=True, exist_ok=True)  # the venv layout on POSIX
            # processed after the environment's own packages, so its pins win; addsitedir also reads the
            # base's .pth files (editable installs such as speedrunner itself)
            (purelib / "_speedrunner_inherit.pth").write_text(
                "".join(f"import site; site.addsitedir({d!r})\n" for d in _base_site_dirs()))
        step([sys.executable, "-m", "pip", "--python", str(env_python(path)), "install", *spec.pip], "pip install")
    r = subprocess.run([sys.executable, "-m", "pip", "--python", str(env_python(path)), "freeze", "--local"],
                       capture_output=True, text=True)
    return r.stdout


def same_interpreter(program: str) -> bool:
    if program == sys.executable:
        return True
    try:
        return os.path.samefile(program, sys.executable) and os.path.isabs(program)
    except OSError:
        return False


@dataclass
class EnvExecutor:
    """Runs every command in the task's environment, built on first use, on top of ``inner``."""

    inner: Any
    spec: EnvSpec
    root: Path
    build_timeout_s: float = 1800.0
    on_event: Callable[..., None] | None = None
    started: float = field(default_factory=time.time)

    def run(self, command: list[str], cwd, out_dir, timeout_s: float, env: dict[str, str] | None = None,
            hidden=None, **kwargs: Any) -> ExecResult:
        out_dir = Path(out_dir)
        try:
            path = ensure_env(self.spec, self.root, self.build_timeout_s, reuse_failures_since=self.started,
                              on_event=self._event(out_dir))
        except EnvBuildError as e:
            out_dir.mkdir(parents=True, exist_ok=True)
            stdout, stderr = out_dir / "stdout.log", out_dir / "stderr.log"
            stdout.write_text("")
            stderr.write_text(e.tail + "\n")
            if e.log is not None and e.log.is_file():
                shutil.copyfile(e.log, out_dir / "env_build.log")
            why = str(e) + (" (a failure recorded earlier in this session; not built again)" if e.reused else "")
            return ExecResult(exit_code=None, wall_s=0.0, killed_reason=why, stdout_path=str(stdout),
                              stderr_path=str(stderr))
        py = str(env_python(path))
        cmd = [py if same_interpreter(command[0]) else command[0], *command[1:]] if command else command
        base = {"VIRTUAL_ENV": str(path), "PATH": f"{path / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}"}
        return self.inner.run(cmd, cwd=cwd, out_dir=out_dir, timeout_s=timeout_s, env={**base, **(env or {})},
                              hidden=hidden, **kwargs)

    def _event(self, out_dir: Path) -> Callable[..., None] | None:
        if self.on_event is None:
            return None
        return lambda event, **kw: self.on_event(event, out_dir=out_dir, **kw)

    def __getattr__(self, name: str) -> Any:
        if name in ("inner", "spec", "root", "on_event") or name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.inner, name)
