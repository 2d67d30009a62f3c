"""Offline models: ``null`` (proposes nothing: the lower bound) and ``scripted`` (plays a file)."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import yaml

from speedrunner.core.errors import UserError
from speedrunner.core.types import Completion, Message, Usage

NO_CHANGE = "NO CHANGE"
# Prompts that ask for an idea contain this marker (see agents/ideators/llm.py); offline models use it
# to answer in the right shape.
IDEA_REQUEST_MARKER = "Reply with one JSON object with the keys \"summary\" and \"hypothesis\""


def estimate_usage(messages: list[Message], text: str) -> Usage:
    """Offline models report a token estimate (4 characters a token) and cost nothing."""
    chars_in = sum(len(m.get("content", "")) for m in messages)
    return Usage(tokens_in=chars_in // 4, tokens_out=len(text) // 4, latency_s=0.0, usd=0.0)


def wants_idea(messages: list[Message]) -> bool:
    return any(IDEA_REQUEST_MARKER in m.get("content", "") for m in messages if m["role"] != "assistant")


class NullModel:
    """Always proposes no change. A run with it measures the root only: speedup 1, FSR 0."""

    name = "null"

    def complete(self, messages: list[Message]) -> Completion:
        if wants_idea(messages):
            text = json.dumps({"summary": "No change.", "hypothesis": "The current code is left as it is."})
        else:
            text = NO_CHANGE
        return Completion(text=text, usage=estimate_usage(messages, text))


class ScriptedModel:
    """Plays responses from a YAML or JSON file in order: ``responses: [text, ...]``.

    ``on_exhausted``: ``repeat_last`` (default), ``cycle`` or ``error``. ``resume(calls)`` moves past the
    calls a resumed run already made, so a resume continues the script where the crash left it.
    """

    def __init__(self, path: str | Path, on_exhausted: str = "repeat_last", name: str = "scripted"):
        self.name = name
        self.path = Path(path).expanduser()
        try:
            data = yaml.safe_load(self.path.read_text())
        except FileNotFoundError:
            raise UserError(f"model.path: script file {self.path} not found") from None
        except yaml.YAMLError as e:
            raise UserError(f"{self.path}: not valid YAML/JSON: {e}") from None
        responses = data.get("responses") if isinstance(data, dict) else data
        if not isinstance(responses, list) or not responses or not all(isinstance(r, str) for r in responses):
            raise UserError(f"{self.path}: expected 'responses:' followed by a non-empty list of strings")
        if on_exhausted not in ("repeat_last", "cycle", "error"):
            raise UserError(f"model.on_exhausted: expected repeat_last, cycle or error, got {on_exhausted!r}")
        self.responses: list[str] = responses
        self.on_exhausted = on_exhausted
        self.calls = 0
        self._lock = threading.Lock()  # workers (executor.workers > 1) call it from several threads

    def resume(self, calls: list[dict]) -> None:
        self.calls += len(calls)

    def complete(self, messages: list[Message]) -> Completion:
        with self._lock:
            i = self.calls
            self.calls += 1
        if i >= len(self.responses):
            if self.on_exhausted == "error":
                raise RuntimeError(f"scripted model {self.path}: all {len(self.responses)} responses used")
            i = i % len(self.responses) if self.on_exhausted == "cycle" else len(self.responses) - 1
        text = self.responses[i]
        return Completion(text=text, usage=estimate_usage(messages, text))
