"""``coder=aider``: the coder role is played by aider (the ``aider-chat`` package, pinned), run as a
subprocess from its own virtual environment, as the original llm-speedrunner benchmark ran its agents.

How it fits the harness without a change to the loop. Aider holds its own conversation with the model,
so for ``coder=aider`` the coder role's *model* is :class:`AiderModel` (the factory asks the coder class
for it through :meth:`AiderCoder.coder_model`): its ``complete(messages)`` takes the node's coder prompt,
lays the parent's files out in a scratch folder, runs one fresh aider there, and answers with aider's
transcript followed by a machine-readable result (the new content of each edited file). Everything the
loop does with a model's answer then holds as it is: the call is one ``llm_call`` record in the journal
with aider's tokens and cost (so it counts against ``budget.max_usd``/``max_tokens``), the transcript
lands in the node's ``transcript.json``, the response cache keeps the result (resume and replay need no
aider), and :meth:`AiderCoder.apply` turns the result into the node's edits, or into a clear reason why
there are none.

aider pins old versions of litellm, openai and numpy, so it never enters speedrunner's environment:
``speedrunner setup aider`` creates its virtual environment (:func:`setup_venv`); see docs/AIDER.md.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO, Any

from speedrunner.agents.coders.base import (
    Coder,
    EditError,
    EditResult,
    check_path,
    check_text,
    says_no_change,
)
from speedrunner.agents.listing import parse_files
from speedrunner.core.errors import UserError
from speedrunner.core.types import Completion, Message, Usage
from speedrunner.workspace.store import is_text, matches

AIDER_PACKAGE = "aider-chat"
AIDER_VERSION = "0.86.2"  # the newest aider-chat on PyPI when this was written; installs on Python 3.10-3.12
VENV_ENV = "SPEEDRUNNER_AIDER_VENV"
MARKER = "speedrunner-aider.json"  # written into the venv once aider is installed and answers --version
SETUP_COMMAND = "speedrunner setup aider"
EDIT_FORMATS = ("diff", "whole", "udiff")
PYTHON_MIN, PYTHON_MAX = (3, 10), (3, 13)  # aider-chat 0.86.2: Requires-Python >=3.10,<3.13
RESULT_MARK = "<<<speedrunner-aider-result>>>"
# Files aider reads from its working folder as its own configuration: never shown to it, never taken back.
CONTROL_FILES = re.compile(r"^(\.aider.*|\.env)$")

INSTRUCTIONS = """\
## How to work (aider)
The files you may edit are in the chat; read-only files, if any, are there for reference only. Make the
change by editing the files in your edit format. Nobody will answer questions: decide and edit. Keep
the output lines the harness reads. If you decide that no change should be made, edit nothing and say
NO CHANGE on a line of its own.
"""

NOT_A_RESULT = ("coder=aider expects the result of an aider run (the coder role's model is aider, run by "
                "speedrunner); this reply holds none. Use a provider model (e.g. model=openai_compatible) or "
                "model=oracle/null with coder=aider.")


class AiderUnavailable(RuntimeError):
    """aider is not installed where speedrunner looks for it (the message names the command to run)."""


# ---------------------------------------------------------------------------------------------- the venv
def default_venv() -> Path:
    """``$SPEEDRUNNER_AIDER_VENV``, else ``$SPEEDRUNNER_CACHE/aider-venv``, else ``~/.cache/speedrunner/aider-venv``."""
    env = os.environ.get(VENV_ENV)
    if env:
        return Path(env).expanduser()
    root = os.environ.get("SPEEDRUNNER_CACHE")
    return (Path(root).expanduser() if root else Path.home() / ".cache" / "speedrunner") / "aider-venv"


def resolve_venv(venv: str | Path | None) -> Path:
    return Path(venv).expanduser() if venv else default_venv()


def venv_problem(venv: Path) -> str | None:
    """None when ``venv`` holds the pinned aider, else what is wrong with it."""
    exe = venv / "bin" / "aider"
    if not venv.exists():
        return f"{venv} does not exist"
    try:
        marker = json.loads((venv / MARKER).read_text())
    except (OSError, ValueError):
        return f"{venv} holds no finished aider installation"
    if marker.get("version") != AIDER_VERSION:
        return f"{venv} holds aider {marker.get('version')}, speedrunner needs {AIDER_VERSION}"
    if not os.access(exe, os.X_OK):
        return f"{exe} is missing"
    return None


def aider_executable(venv: str | Path | None = None) -> Path:
    """The ``aider`` program of the venv; :class:`AiderUnavailable` naming the setup command otherwise."""
    path = resolve_venv(venv)
    problem = venv_problem(path)
    if problem is not None:
        raise AiderUnavailable(f"aider is not installed: {problem}. Run `{SETUP_COMMAND}` (it installs "
                               f"{AIDER_PACKAGE}=={AIDER_VERSION} into its own virtual environment, about a "
                               f"minute), or point ${VENV_ENV} or coder.venv at such an environment")
    return path / "bin" / "aider"


def _python_version(python: str) -> tuple[int, int] | None:
    try:
        out = subprocess.run([python, "-c", "import sys, venv, ensurepip; print(*sys.version_info[:2])"], capture_output=True,
                             text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    major, minor = out.stdout.split()
    return int(major), int(minor)


def find_python(explicit: str | None = None) -> str:
    """An interpreter aider supports (3.10 to 3.12, with ``venv``): ``explicit``, else the system's python3."""
    if explicit:
        v = _python_version(explicit)
        if v is None or not PYTHON_MIN <= v < PYTHON_MAX:
            raise UserError(f"--python {explicit}: aider {AIDER_VERSION} needs Python 3.10 to 3.12 with the venv "
                            f"module; that interpreter is {'unusable' if v is None else f'{v[0]}.{v[1]}'}")
        return explicit
    candidates = ["/usr/bin/python3", shutil.which("python3"), shutil.which("python3.12"),
                  shutil.which("python3.11"), shutil.which("python3.10"), sys.executable]
    for c in dict.fromkeys(c for c in candidates if c):
        v = _python_version(c)
        if v is not None and PYTHON_MIN <= v < PYTHON_MAX:
            return c
    raise UserError(f"no Python 3.10 to 3.12 with the venv module found for aider {AIDER_VERSION}; "
                    f"install one and pass it with `{SETUP_COMMAND} --python PATH`")


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock beside the venv, so two processes never build the same one at once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _stream(argv: list[str], env: dict[str, str], out: IO[str], timeout_s: float) -> tuple[int | None, str]:
    """Run ``argv``, copying its output to ``out`` as it comes; (exit status, or None on a timeout; output)."""
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=env)
    expired = threading.Event()

    def kill() -> None:
        expired.set()
        proc.kill()

    timer = threading.Timer(timeout_s, kill)
    timer.start()
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            out.write(line)
            lines.append(line)
        out.flush()
        code = proc.wait()
    finally:
        timer.cancel()
    return (None if expired.is_set() else code), "".join(lines)


def setup_venv(venv: str | Path | None = None, *, python: str | None = None, force: bool = False,
               log: IO[str] | None = None, timeout_s: float = 1800) -> tuple[Path, bool]:
    """Create the aider venv (``python -m venv`` + ``pip install aider-chat==AIDER_VERSION``) unless a
    finished one is there. Returns (venv, installed_now). pip's output goes to ``log`` (default: this
    process's stdout). A failure raises :class:`UserError` with the end of pip's output."""
    path = resolve_venv(venv)
    with _locked(path):
        if not force and venv_problem(path) is None:
            return path, False
        interpreter = find_python(python)
        if path.exists() and any(path.iterdir()) and not (path / "pyvenv.cfg").is_file():
            raise UserError(f"{path} exists and is not a virtual environment; choose another place "
                            f"(--venv, ${VENV_ENV}) or empty it first")
        shutil.rmtree(path, ignore_errors=True)
        out = log if log is not None else sys.stdout
        steps = [[interpreter, "-m", "venv", str(path)],
                 [str(path / "bin" / "python"), "-m", "pip", "install", "--disable-pip-version-check", "--no-input",
                  f"{AIDER_PACKAGE}=={AIDER_VERSION}"],
                 [str(path / "bin" / "aider"), "--version"]]
        env = {**os.environ, "PIP_NO_INPUT": "1", "PYTHONNOUSERSITE": "1"}
        captured = ""
        for argv in steps:
            print("$ " + " ".join(argv), file=out, flush=True)
            code, captured = _stream(argv, env, out, timeout_s)
            if code != 0:
                why = f"did not finish in {timeout_s:g} s" if code is None else f"failed with status {code}"
                raise UserError(f"{SETUP_COMMAND}: `{' '.join(argv[:3])} ...` {why}; the end of its output:\n"
                                f"{_tail(captured)}")
        if AIDER_VERSION not in captured:
            raise UserError(f"{SETUP_COMMAND}: {path}/bin/aider --version printed {captured.strip()!r}, "
                            f"not {AIDER_VERSION}")
        marker = {"package": AIDER_PACKAGE, "version": AIDER_VERSION, "python": interpreter,
                  "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
        (path / MARKER).write_text(json.dumps(marker, indent=1) + "\n")
        return path, True


# ------------------------------------------------------------------------------------ the model mapping
# The variable litellm (inside aider) reads a provider's key from; others: PROVIDER_API_KEY.
KEY_VARIABLES = {"openai": "OPENAI_API_KEY", "openai_compatible": "OPENAI_API_KEY", "local": "OPENAI_API_KEY",
                 "anthropic": "ANTHROPIC_API_KEY", "gemini": "GEMINI_API_KEY", "deepseek": "DEEPSEEK_API_KEY",
                 "azure": "AZURE_API_KEY", "openrouter": "OPENROUTER_API_KEY", "together_ai": "TOGETHERAI_API_KEY",
                 "fireworks_ai": "FIREWORKS_AI_API_KEY", "groq": "GROQ_API_KEY", "mistral": "MISTRAL_API_KEY",
                 "xai": "XAI_API_KEY"}
OPENAI_ROUTED = {"openai", "openai_compatible"}  # their base URL goes to --openai-api-base


def key_variable(provider: str) -> str:
    return KEY_VARIABLES.get(provider, f"{provider.upper()}_API_KEY")


@dataclass
class ModelMapping:
    """What a speedrunner model config becomes for aider: arguments, environment, settings files."""

    route: str  # litellm's "provider/name", e.g. openai/Qwen2.5-Coder-7B for an OpenAI-compatible server
    args: list[str]
    env: dict[str, str]  # plain (non-secret) variables: base URLs of other providers, Azure's API version
    secret_env: dict[str, str]  # variable for aider -> the speedrunner secret (variable name) that fills it
    extra_params: dict[str, Any] = field(default_factory=dict)  # sampling, via aider's "aider/extra_params"
    metadata: dict[str, Any] = field(default_factory=dict)  # prices, via --model-metadata-file


def map_model(mc: Any, timeout_s: float | None = None) -> ModelMapping:
    """``mc``: a :class:`speedrunner.llm.provider.ModelConfig`. No secret value is read here."""
    route = mc.route
    args = ["--model", route, "--weak-model", route, "--editor-model", route]
    env: dict[str, str] = {}
    if mc.base_url:
        if mc.provider in OPENAI_ROUTED:
            args += ["--openai-api-base", str(mc.base_url)]
        else:
            env[f"{mc.provider.upper()}_API_BASE"] = str(mc.base_url)
    if mc.api_version:
        env[f"{mc.provider.upper()}_API_VERSION"] = str(mc.api_version)
    args += ["--timeout", f"{float(timeout_s if timeout_s is not None else mc.timeout_s):g}"]
    secret_env: dict[str, str] = {}
    if mc.api_key_env:
        secret_env[key_variable(mc.provider)] = str(mc.api_key_env)
    for kwarg, var in {**mc.credentials, **mc.optional_credentials}.items():
        secret_env[str(kwarg).upper()] = str(var)  # aws_secret_access_key -> AWS_SECRET_ACCESS_KEY
    extra = {k: v for k, v in (("temperature", mc.temperature), ("max_tokens", mc.max_tokens), ("top_p", mc.top_p),
                               ("seed", mc.seed)) if v is not None}
    extra.update(mc.params)
    metadata: dict[str, Any] = {}
    if mc.input_usd_per_mtok is not None and mc.output_usd_per_mtok is not None:
        metadata[route] = {"input_cost_per_token": float(mc.input_usd_per_mtok) / 1e6,
                           "output_cost_per_token": float(mc.output_usd_per_mtok) / 1e6,
                           "litellm_provider": "openai" if mc.provider in OPENAI_ROUTED | {"local"} else mc.provider,
                           "mode": "chat"}
    return ModelMapping(route, args, env, secret_env, extra, metadata)


def base_command(exe: Path, scratch: Path, edit_format: str, map_tokens: int) -> list[str]:
    """The flags every run gets: one message, no prompts, no git, no network but the model's."""
    return [str(exe), "--edit-format", edit_format,
            "--yes-always", "--no-git", "--no-auto-commits", "--no-dirty-commits",
            "--no-pretty", "--no-stream", "--no-fancy-input", "--no-show-model-warnings",
            "--no-analytics", "--analytics-log", str(scratch / "events.jsonl"),
            "--no-check-update", "--no-show-release-notes", "--no-browser", "--disable-playwright",
            "--no-detect-urls", "--no-suggest-shell-commands", "--no-auto-lint", "--no-auto-test",
            "--map-tokens", str(int(map_tokens)),
            "--chat-history-file", str(scratch / "chat.history.md"),
            "--input-history-file", str(scratch / "input.history"), "--no-restore-chat-history",
            "--env-file", str(scratch / "none.env"), "--encoding", "utf-8"]


# ------------------------------------------------------------------------------------ usage and result
_TOKENS = re.compile(r"Tokens: (?P<sent>[\d.]+k?) sent(?:, [\d.]+k? cache write)?(?:, [\d.]+k? cache hit)?, "
                     r"(?P<received>[\d.]+k?) received\.(?:\s*(?:>\s*)?Cost: \$(?P<cost>[\d.]+) message)?")


def _count(s: str) -> int:
    return round(float(s[:-1]) * 1000) if s.endswith("k") else int(float(s))


@dataclass
class AiderUsage:
    tokens_in: int = 0
    tokens_out: int = 0
    usd: float | None = None  # aider's own cost figure; None when it printed none
    calls: int = 0
    source: str = "none"  # events (exact counts), report (aider's rounded 'Tokens:' lines) or none


def parse_report(text: str) -> AiderUsage:
    """Sum aider's ``Tokens: 2.2k sent, 32 received. Cost: $0.0012 message, $0.0030 session.`` lines
    (one per model call; counts above 999 are rounded by aider, e.g. 2.2k)."""
    u = AiderUsage(source="report")
    for m in _TOKENS.finditer(text):
        u.tokens_in += _count(m["sent"])
        u.tokens_out += _count(m["received"])
        u.calls += 1
        if m["cost"] is not None:
            u.usd = (u.usd or 0.0) + float(m["cost"])
    return u if u.calls else AiderUsage()


def parse_events(path: Path) -> AiderUsage | None:
    """aider's local event log (``--analytics-log`` with analytics off): one ``message_send`` record per
    model call, with exact token counts. None when the file holds none."""
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return None
    u = AiderUsage(source="events")
    for line in lines:
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if rec.get("event") != "message_send":
            continue
        p = rec.get("properties") or {}
        u.tokens_in += int(p.get("prompt_tokens") or 0)
        u.tokens_out += int(p.get("completion_tokens") or 0)
        if isinstance(p.get("cost"), (int, float)):
            u.usd = (u.usd or 0.0) + float(p["cost"])
        u.calls += 1
    return u if u.calls else None


def render_result(result: dict[str, Any]) -> str:
    """The result block that ends an answer; '<' is escaped so no text filter can cut into it."""
    return f"{RESULT_MARK}\n" + json.dumps(result, sort_keys=True).replace("<", "\\u003c")


def read_result(text: str) -> dict[str, Any] | None:
    i = text.rfind(RESULT_MARK)
    if i < 0:
        return None
    try:
        data = json.loads(text[i + len(RESULT_MARK):].strip())
    except ValueError:
        return None
    return data if isinstance(data, dict) and "status" in data else None


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def snapshot(root: Path) -> dict[str, str]:
    """Relative path -> SHA-256 of every file under ``root``."""
    return {p.relative_to(root).as_posix(): _sha(p) for p in sorted(root.rglob("*")) if p.is_file()}


def _tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


# ------------------------------------------------------------------------------------ the prompt
_CURRENT = re.compile(r"^# Current code(?: \((?P<node>[^)\n]*)\))?[ \t]*$", re.MULTILINE)


def aider_message(messages: list[Message], editable: list[str], read_only: list[str]) -> str:
    """The one message aider gets: the system prompt (task, rules, metric), then the coder prompt with
    its file listing replaced by the names of the files in aider's chat, then any feedback of a retry."""
    system = "\n\n".join(m["content"].strip() for m in messages if m["role"] == "system")
    users = [m["content"] for m in messages if m["role"] == "user"]
    prompt = users[0] if users else ""
    m = _CURRENT.search(prompt)
    j = prompt.find(INSTRUCTIONS.splitlines()[0], m.end()) if m else -1
    if m and j > 0:
        names = ", ".join(editable) or "(none)"
        ro = f"\nRead-only, for reference: {', '.join(read_only)}." if read_only else ""
        node = f" ({m['node']})" if m["node"] else ""
        prompt = f"{prompt[:m.start()]}# Current code{node}\nThe files are in the chat: {names}.{ro}\n\n{prompt[j:]}"
    parts = [system, prompt.strip()]
    if len(users) > 1:
        parts.append("# Feedback on your previous attempt (the files are back as they were)\n"
                     + "\n\n".join(u.strip() for u in users[1:]))
    return "\n\n".join(p for p in parts if p) + "\n"


# ------------------------------------------------------------------------------------ the driver
def _set_pdeathsig() -> None:  # aider dies with speedrunner (Linux)
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG


PASS_ENV = ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy", "SSL_CERT_FILE",
            "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE")


@dataclass
class RunOutcome:
    exit_code: int | None
    timed_out: bool
    wall_s: float
    stdout: str
    stderr: str


class AiderModel:
    """The coder role's model for ``coder=aider``: each ``complete`` runs one fresh aider on the files
    of the prompt. Keys go only into aider's environment (never its command line or a file)."""

    def __init__(self, mc: Any, task: Any, *, edit_format: str = "diff", timeout_s: float = 900,
                 venv: str | None = None, map_tokens: int = 0, scratch_dir: str | None = None,
                 keep_scratch: bool = False, extra_args: list[str] | None = None,
                 secrets: dict[str, Any] | None = None, label: str | None = None):
        self.cfg = mc
        self.name = mc.name
        self.label = label or mc.name
        self.edit_format = _check_edit_format(edit_format)
        self.timeout_s = float(timeout_s)
        self.venv = venv
        self.map_tokens = int(map_tokens)
        self.scratch_dir = scratch_dir
        self.keep_scratch = bool(keep_scratch)
        self.extra_args = [str(a) for a in (extra_args or [])]
        self.mapping = map_model(mc)
        self._secrets = dict(secrets or {})  # variable for aider -> Secret
        self.editable = list(task.editable)
        self.protected = [p for p in task.protected if not PurePosixPath(p).is_absolute()]
        self.template_dir = Path(task.template_dir)
        self.template_include = list(task.template_include or ["*"])

    @classmethod
    def from_config(cls, mc: Any, task: Any, *, label: str | None = None, **kw: Any) -> AiderModel:
        """Reads the keys (a missing one stops the run before it starts) and checks the prices, like
        :meth:`LiteLLMModel.from_config`."""
        from speedrunner.llm.provider import NO_KEY, LiteLLMModel
        from speedrunner.llm.secrets import Secret, lookup, require

        what = f"model={label or mc.name} (coder=aider)"
        LiteLLMModel.from_config(mc, label=label)  # the same key and price checks as any provider model
        secrets: dict[str, Secret] = {}
        mapping = map_model(mc)
        for var_for_aider, var in mapping.secret_env.items():
            optional = var in mc.optional_credentials.values()
            s = lookup(var) if optional else require(var, what)
            if s is not None:
                secrets[var_for_aider] = s
        if mc.provider in OPENAI_ROUTED and "OPENAI_API_KEY" not in secrets:
            secrets["OPENAI_API_KEY"] = Secret(NO_KEY, "none")  # a server without authentication
        return cls(mc, task, secrets=secrets, label=label, **kw)

    def identity(self) -> dict[str, Any]:
        """What the response cache keys on besides the messages (no URL, no key)."""
        return {"provider": self.cfg.provider, "name": self.cfg.name, "sampling": self.cfg.sampling(),
                "coder": "aider", "aider": AIDER_VERSION, "edit_format": self.edit_format,
                "map_tokens": self.map_tokens, "extra_args": self.extra_args}

    # ------------------------------------------------------------------ building blocks
    def command(self, exe: Path, scratch: Path, message: str, edit: list[str], read: list[str]) -> list[str]:
        argv = base_command(exe, scratch, self.edit_format, self.map_tokens) + self.mapping.args
        if self.mapping.extra_params:
            argv += ["--model-settings-file", str(scratch / "model-settings.yml")]
        if self.mapping.metadata:
            argv += ["--model-metadata-file", str(scratch / "model-metadata.json")]
        argv += self.extra_args
        if len(message.encode()) < 100_000 and not message.startswith("-"):  # one argument: at most 128 KiB
            argv += ["--message", message]
        else:
            (scratch / "message.md").write_text(message, encoding="utf-8")
            argv += ["--message-file", str(scratch / "message.md")]
        for p in read:
            argv += ["--read", p]
        return argv + ["--", *edit]

    def environment(self, scratch: Path, exe: Path) -> dict[str, str]:
        """A scrubbed environment: HOME, caches and temp files in the scratch folder, the keys, nothing else
        of speedrunner's (no AIDER_* variable of the user's shell reaches aider)."""
        home = scratch / "home"
        env = {"PATH": f"{exe.parent}:/usr/local/bin:/usr/bin:/bin", "HOME": str(home), "TMPDIR": str(scratch / "tmp"),
               "XDG_CACHE_HOME": str(home / ".cache"), "XDG_CONFIG_HOME": str(home / ".config"),
               "XDG_DATA_HOME": str(home / ".local" / "share"), "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8",
               "PYTHONIOENCODING": "utf-8", "PYTHONDONTWRITEBYTECODE": "1", "PYTHONNOUSERSITE": "1",
               "TERM": "dumb", "NO_COLOR": "1", "COLUMNS": "160",
               "LITELLM_LOCAL_MODEL_COST_MAP": "True"}  # never fetch litellm's price list
        env.update({k: os.environ[k] for k in PASS_ENV if os.environ.get(k)})
        env.update(self.mapping.env)
        env.update({k: s.reveal() for k, s in self._secrets.items()})
        return env

    def _layout(self, scratch: Path, files: dict[str, str]) -> tuple[Path, list[str], list[str]]:
        """The scratch folder: home/ (aider's HOME), tmp/, work/ (the node's files). Returns (work,
        files to edit, read-only files)."""
        home, work = scratch / "home", scratch / "work"
        for d in (home / ".aider" / "caches", scratch / "tmp", work):
            d.mkdir(parents=True, exist_ok=True)
        # aider fetches a price list into this cache when it is missing or empty: a non-empty one stops that.
        (home / ".aider" / "caches" / "model_prices_and_context_window.json").write_text(
            json.dumps(self.mapping.metadata or {"speedrunner/offline": {}}))
        if self.mapping.extra_params:
            import yaml

            (scratch / "model-settings.yml").write_text(
                yaml.safe_dump([{"name": "aider/extra_params", "extra_params": self.mapping.extra_params}]))
        if self.mapping.metadata:
            (scratch / "model-metadata.json").write_text(json.dumps(self.mapping.metadata))
        # The files the node may not edit come from the template (protected and other non-editable files
        # never change from node to node); the editable ones come from the prompt.
        read: list[str] = []
        if self.template_dir.is_dir():
            for p in sorted(self.template_dir.rglob("*")):
                rel = p.relative_to(self.template_dir).as_posix()
                if (not p.is_file() or "__pycache__" in p.parts or not matches(rel, self.template_include)
                        or CONTROL_FILES.match(rel) or rel in files or not is_text(p)):
                    continue
                is_protected = matches(rel, self.protected)
                if matches(rel, self.editable) and not is_protected:
                    continue  # an editable file the prompt does not list (deleted in an earlier node)
                dst = work / rel
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(p, dst)
                if is_protected:
                    read.append(rel)
        edit: list[str] = []
        for rel, text in files.items():
            if CONTROL_FILES.match(rel):
                continue
            dst = work / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.write_text(text, encoding="utf-8")
            edit.append(rel)
        return work, edit, read

    def _run(self, argv: list[str], work: Path, env: dict[str, str], scratch: Path) -> RunOutcome:
        out_path, err_path = scratch / "stdout.txt", scratch / "stderr.txt"
        t0 = time.monotonic()
        timed_out = False
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            try:
                proc = subprocess.Popen(argv, cwd=work, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                        start_new_session=True,
                                        preexec_fn=_set_pdeathsig if sys.platform.startswith("linux") else None)
            except OSError as e:  # e.g. the venv's interpreter is gone
                raise AiderUnavailable(f"{argv[0]} could not start ({e}); run `{SETUP_COMMAND} --force`") from None
            try:
                code: int | None = proc.wait(timeout=self.timeout_s)
            except subprocess.TimeoutExpired:
                timed_out = True
                for sig, grace in ((signal.SIGTERM, 5), (signal.SIGKILL, 10)):
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, sig)
                    try:
                        proc.wait(timeout=grace)
                        break
                    except subprocess.TimeoutExpired:
                        continue
                code = proc.returncode
        return RunOutcome(code, timed_out, time.monotonic() - t0, out_path.read_text(encoding="utf-8", errors="replace"),
                          err_path.read_text(encoding="utf-8", errors="replace"))

    def _changes(self, work: Path, before: dict[str, str], edit: list[str]) -> tuple[dict[str, str | None], list[str]]:
        """(edits to take into the node, paths whose change was reverted). Only the editable files the
        prompt listed may change; a new file must match ``editable`` and not ``protected``."""
        after = snapshot(work)
        edits: dict[str, str | None] = {}
        reverted: list[str] = []
        for rel in sorted(set(before) | set(after)):
            if before.get(rel) == after.get(rel):
                continue
            new = rel not in before
            allowed = rel in edit or (new and matches(rel, self.editable) and not matches(rel, self.protected)
                                      and not CONTROL_FILES.match(rel))
            if not allowed:
                reverted.append(rel)
                continue
            if rel not in after:
                edits[rel] = None
            elif is_text(work / rel):
                edits[rel] = (work / rel).read_text(encoding="utf-8")
            else:
                reverted.append(rel)  # binary or too large for a text edit
        return edits, reverted

    def _redact(self, text: str) -> str:
        from speedrunner.llm.secrets import redact

        return redact(text, tuple(s for s in self._secrets.values() if s.source != "none"))

    def _usd(self, usage: AiderUsage) -> tuple[float, str]:
        """Priced like any provider call of this model: the config's prices, else the harness's litellm
        price map; aider's own figure only when neither can price it."""
        c = self.cfg
        if c.input_usd_per_mtok is not None and c.output_usd_per_mtok is not None:
            return (usage.tokens_in * float(c.input_usd_per_mtok) + usage.tokens_out * float(c.output_usd_per_mtok)) / 1e6, "config"
        try:
            from speedrunner.llm.provider import import_litellm

            pin, pout = import_litellm().cost_per_token(model=c.price_as or c.route, prompt_tokens=usage.tokens_in,
                                                        completion_tokens=usage.tokens_out)
            return float(pin + pout), "litellm"
        except Exception:
            return (usage.usd or 0.0, "aider") if usage.usd is not None else (0.0, "unknown")

    # ------------------------------------------------------------------ one call
    def complete(self, messages: list[Message]) -> Completion:
        exe = aider_executable(self.venv)  # missing: an exception, so the call is not cached as an answer
        users = [m["content"] for m in messages if m["role"] == "user"]
        files = parse_files(users[0]) if users else {}
        if self.scratch_dir:
            Path(self.scratch_dir).mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix="speedrunner-aider-", dir=self.scratch_dir)).resolve()
        try:
            work, edit, read = self._layout(scratch, files)
            before = snapshot(work)
            message = aider_message(messages, edit, read)
            argv = self.command(exe, scratch, message, edit, read)
            run = self._run(argv, work, self.environment(scratch, exe), scratch)
            edits, reverted = self._changes(work, before, edit)
            usage = parse_events(scratch / "events.jsonl") or parse_report(run.stdout)
            chat_file = scratch / "chat.history.md"
            chat = chat_file.read_text(encoding="utf-8", errors="replace") if chat_file.is_file() else ""
            # A provider's error message may echo a key: none reaches the transcript, the journal or the cache.
            chat, run.stdout, run.stderr = (self._redact(t) for t in (chat, run.stdout, run.stderr))
        finally:
            if not self.keep_scratch:
                shutil.rmtree(scratch, ignore_errors=True)
        status, detail = self._verdict(run, edits, reverted, edit)
        if status != "edited":
            edits = {}
        usd, usd_source = self._usd(usage)
        notes = [f"speedrunner: {detail}"] if status != "edited" or reverted else []
        if status in ("timeout", "crashed"):
            notes.append(f"aider's stderr (end):\n{_tail(run.stderr, 30) or '(empty)'}")
        transcript = (chat.strip() or run.stdout.strip() or "(aider wrote no transcript)")
        result = {"v": 1, "status": status, "detail": detail, "edits": edits, "reverted": reverted,
                  "exit_code": run.exit_code, "edit_format": self.edit_format}
        text = "\n\n".join([transcript, *notes, render_result(result)])
        meta = {"provider": self.cfg.provider, "coder_backend": "aider", "aider_version": AIDER_VERSION,
                "aider_status": status, "aider_exit_code": run.exit_code, "aider_calls": usage.calls,
                "aider_usd": usage.usd, "usage_source": usage.source, "usd_source": usd_source,
                "aider_wall_s": round(run.wall_s, 3)}
        if reverted:
            meta["aider_reverted"] = reverted
        if status == "timeout" or usage.calls == 0:
            meta["usage_incomplete"] = True  # a call cut off by the timeout reports nothing
        return Completion(text=text, usage=Usage(usage.tokens_in, usage.tokens_out, round(run.wall_s, 4), usd),
                          meta=meta)

    def _verdict(self, run: RunOutcome, edits: dict[str, str | None], reverted: list[str],
                 edit: list[str]) -> tuple[str, str]:
        rev = (f"; its edits to files it may not change were reverted: {', '.join(reverted)}" if reverted else "")
        if run.timed_out:
            return "timeout", (f"aider did not finish within {self.timeout_s:g} s (coder.timeout_s) and was "
                               f"stopped; its partial edits were dropped{rev}")
        if run.exit_code != 0:
            return "crashed", (f"aider exited with status {run.exit_code}{rev}; the end of its output:\n"
                               f"{_tail(run.stderr + chr(10) + run.stdout)}")
        if not edits:
            if says_no_change(run.stdout):
                return "no_change", f"aider made no edit: the model said NO CHANGE{rev}"
            return "no_edit", (f"aider made no edit to the files it may change ({', '.join(edit) or 'none'}){rev}; "
                               f"the end of its output:\n{_tail(run.stdout)}")
        return "edited", f"aider edited {', '.join(sorted(edits))}{rev}"


def _check_edit_format(fmt: str) -> str:
    if fmt not in EDIT_FORMATS:
        raise UserError(f"coder.edit_format: expected one of {', '.join(EDIT_FORMATS)}, got {fmt!r}")
    return fmt


# ------------------------------------------------------------------------------------ the coder
class AiderCoder(Coder):
    """Reads the result of an aider run (see the module's docstring); the run itself is :class:`AiderModel`."""

    name = "aider"

    def __init__(self, edit_format: str = "diff", timeout_s: float = 900, venv: str | None = None,
                 map_tokens: int = 0, scratch_dir: str | None = None, keep_scratch: bool = False,
                 extra_args: list[str] | None = None):
        self.options = {"edit_format": _check_edit_format(edit_format), "timeout_s": float(timeout_s), "venv": venv,
                        "map_tokens": int(map_tokens), "scratch_dir": scratch_dir, "keep_scratch": bool(keep_scratch),
                        "extra_args": list(extra_args or [])}
        if self.options["timeout_s"] <= 0:
            raise UserError("coder.timeout_s must be more than 0")

    def instructions(self) -> str:
        return INSTRUCTIONS

    def apply(self, text: str, files: dict[str, str], protected: list[str]) -> EditResult:
        result = read_result(text)
        if result is None:
            if says_no_change(text):
                return EditResult(edits={}, no_change=True)
            raise EditError(NOT_A_RESULT)
        if result["status"] == "no_change":
            return EditResult(edits={}, no_change=True)
        if result["status"] != "edited":
            raise EditError(str(result.get("detail") or f"aider run {result['status']}"))
        edits: dict[str, str | None] = {}
        for raw, content in (result.get("edits") or {}).items():
            path = check_path(raw, protected, existing=files)
            check_text(path, content)
            if content is None:
                if path in files:
                    edits[path] = None
            elif files.get(path) != content:
                edits[path] = content
        return EditResult(edits=edits, no_change=not edits)

    @classmethod
    def render(cls, old: dict[str, str], new: dict[str, str]) -> str:
        """The answer an aider run that turns ``old`` into ``new`` would give (used by ``model=oracle``)."""
        edits = {p: t for p, t in sorted(new.items()) if old.get(p) != t}
        if not edits:
            return "NO CHANGE"
        result = {"v": 1, "status": "edited", "detail": f"edited {', '.join(edits)}", "edits": edits, "reverted": [],
                  "exit_code": None, "edit_format": None}
        return "(rendered without aider)\n\n" + render_result(result)

    @classmethod
    def coder_model(cls, model_cfg: dict[str, Any], task: Any, coder_cfg: dict[str, Any], *, cache: Any = None,
                    replay: bool = False, ledger: Any = None) -> Any:
        """The coder role's model for ``coder=aider`` (called by ``llm.factory.build_role_models``): an
        :class:`AiderModel` for a provider model, wrapped like one (response cache, budget guard); None for an
        offline model (null, oracle, scripted, a ``cls`` model), which then answers as usual."""
        cfg = dict(model_cfg)
        if not cfg.get("provider") or cfg.get("cls"):
            return None
        if cfg.get("provider") == "local":
            raise UserError("coder=aider talks to the model itself and does not start a local llama.cpp server: serve "
                            "the model yourself and use model=openai_compatible model.base_url=http://127.0.0.1:PORT/v1")
        from speedrunner.llm.cache import CachingModel, ReplayOnly
        from speedrunner.llm.ledger import GuardedModel
        from speedrunner.llm.provider import ModelConfig

        opts = cls(**{k: v for k, v in coder_cfg.items() if k not in ("name", "cls", "max_retries")}).options
        mc = ModelConfig.from_dict(cfg)
        label = str(cfg.get("name"))
        if replay:
            if cache is None:
                raise UserError("replay needs the run's response cache")
            ident = AiderModel(mc, task, **opts).identity()
            return CachingModel(ReplayOnly(mc.name, ident), cache, strict=True)
        model: Any = AiderModel.from_config(mc, task, label=label, **opts)
        if cache is not None:
            model = CachingModel(model, cache)
        return GuardedModel(model, ledger) if ledger is not None else model
