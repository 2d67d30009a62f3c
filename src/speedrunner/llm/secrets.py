"""API keys: from environment variables or a git-ignored ``secrets.yaml``, never written anywhere.

Lookup order for a variable ``NAME``: the environment, then ``$SPEEDRUNNER_SECRETS`` (a YAML file of
``NAME: value`` lines) if set, else ``./secrets.yaml``. Keys are handed to litellm as arguments, never
put into ``os.environ`` (agent-written code runs with a scrubbed environment, and a key that is not
there cannot leak). :class:`Secret` hides its value from ``repr``/``str``; :func:`redact` cuts keys
out of provider messages before they reach an exception, a log or the journal.
"""

from __future__ import annotations

import os
from pathlib import Path

import yaml

from speedrunner.core.errors import UserError

SECRETS_ENV = "SPEEDRUNNER_SECRETS"
SECRETS_FILE = "secrets.yaml"


class Secret:
    """A key that does not show itself: ``repr``/``str`` print ``Secret(NAME)``; ``reveal()`` gives the value."""

    __slots__ = ("_value", "source")

    def __init__(self, value: str, source: str):
        self._value = value
        self.source = source  # the variable's name, safe to show

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return f"Secret({self.source})"

    __str__ = __repr__

    def __reduce__(self):  # never pickled or copied into another process by accident
        raise TypeError("a Secret cannot be pickled")


def secrets_file() -> Path | None:
    """The secrets file in use, or None. ``$SPEEDRUNNER_SECRETS`` must name an existing file when set."""
    env = os.environ.get(SECRETS_ENV)
    if env:
        p = Path(env).expanduser()
        if not p.is_file():
            raise UserError(f"${SECRETS_ENV} names {p}, which is not a file")
        return p
    p = Path.cwd() / SECRETS_FILE
    return p if p.is_file() else None


def _read_file(path: Path) -> dict[str, str]:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:  # the YAML error quotes the line: do not show it, it may hold a key
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise UserError(f"{path}: not valid YAML{where}; expected lines of 'VARIABLE_NAME: value'") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping of 'VARIABLE_NAME: value' lines")
    return {str(k): str(v) for k, v in data.items() if v is not None}


def lookup(var: str) -> Secret | None:
    """The value of ``var`` from the environment or the secrets file, or None."""
    value = os.environ.get(var)
    if value:
        return Secret(value, var)
    path = secrets_file()
    if path is not None:
        value = _read_file(path).get(var)
        if value:
            return Secret(value, var)
    return None


def require(var: str, what: str) -> Secret:
    """Like :func:`lookup`, but a missing key is a :class:`UserError` that names the variable to set."""
    s = lookup(var)
    if s is None:
        where = os.environ.get(SECRETS_ENV) or f"{SECRETS_FILE} in the current folder"
        raise UserError(f"{what} needs the secret {var}: set the environment variable {var}, or add the line "
                        f"'{var}: ...' to {where} (or to the file named by ${SECRETS_ENV})")
    return s


def redact(text: str, secrets: list[Secret] | tuple[Secret, ...]) -> str:
    """``text`` with every key cut out, and the first and last 8 characters of each key too (providers
    often echo a key half-masked, ``sk-abc...wxyz``)."""
    for s in secrets:
        v = s.reveal()
        if not v:
            continue
        text = text.replace(v, f"<{s.source}>")
        if len(v) >= 16:
            for frag in (v[:8], v[-8:]):
                text = text.replace(frag, "***")
    return text
