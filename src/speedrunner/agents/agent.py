"""``Agent.act``: one model call with validation and retries, every attempt recorded.

The system prompt is the first message of every call (never only on retries). When the validator
rejects a reply, its message is appended, addressed to the model, and the model tries again with the
whole exchange so far. Reasoning traces (``<think>...</think>``) are cut from the text the validator
parses and kept apart in the record.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from speedrunner.core.types import Completion, Message, Model, Usage
from speedrunner.llm.errors import BudgetExceeded

T = TypeVar("T")
_THINK = re.compile(r"<think>(.*?)</think>", re.DOTALL | re.IGNORECASE)


class Invalid(ValueError):
    """Raised by a validator; the message is shown to the model on the retry."""


@dataclass
class ActResult(Generic[T]):
    ok: bool
    value: T | None
    text: str
    attempts: int
    usage: Usage
    error: str | None = None
    transcript: list[Message] = field(default_factory=list)


def split_reasoning(text: str, reasoning: str | None = None) -> tuple[str, str | None]:
    found = _THINK.findall(text)
    if found:
        text = _THINK.sub("", text).strip()
        reasoning = "\n\n".join(x.strip() for x in ([reasoning] if reasoning else []) + found)
    return text, reasoning


class Agent:
    def __init__(self, model: Model, system: str, role: str,
                 on_call: Callable[[dict[str, Any]], None] | None = None):
        self.model = model
        self.system = system
        self.role = role
        self.on_call = on_call or (lambda rec: None)
        self.log: list[dict[str, Any]] = []  # one entry per act: the whole exchange, for transcript.json
        self._reasoning: list[str | None] = []

    def _logged(self, result: ActResult[T]) -> ActResult[T]:
        entry: dict[str, Any] = {"role": self.role, "ok": result.ok, "attempts": result.attempts,
                                 "error": result.error, "messages": result.transcript}
        if any(self._reasoning):
            entry["reasoning"] = list(self._reasoning)  # per attempt; kept apart from what was parsed
        self.log.append(entry)
        self._reasoning = []
        return result

    def act(self, prompt: str, validator: Callable[[str], T] | None = None, max_retries: int = 2) -> ActResult[T]:
        messages: list[Message] = [{"role": "system", "content": self.system}, {"role": "user", "content": prompt}]
        total = Usage()
        error = None
        text = ""
        for attempt in range(1, max_retries + 2):
            t0 = time.monotonic()
            try:
                comp: Completion = self.model.complete(list(messages))
            except BudgetExceeded:
                raise  # a cap stops the run (the loop discards this node and stops cleanly)
            except Exception as e:  # a model failure ends this act, never the run
                error = f"{type(e).__name__}: {e}"
                self.on_call({"role": self.role, "attempt": attempt, "ok": False, "model_error": error,
                              "latency_s": round(time.monotonic() - t0, 4)})
                return self._logged(ActResult(False, None, text, attempt, total, error, messages))
            latency = comp.usage.latency_s or (time.monotonic() - t0)
            usage = Usage(comp.usage.tokens_in, comp.usage.tokens_out, latency, comp.usage.usd)
            total += usage
            text, reasoning = split_reasoning(comp.text, comp.reasoning)
            self._reasoning.append(reasoning)
            messages.append({"role": "assistant", "content": text})
            rec: dict[str, Any] = {**comp.meta, "role": self.role, "model": getattr(self.model, "name", "?"),
                                   "attempt": attempt, "tokens_in": usage.tokens_in, "tokens_out": usage.tokens_out,
                                   "latency_s": round(latency, 4), "usd": usage.usd}
            if reasoning:
                rec["reasoning"] = reasoning
            if validator is None:
                self.on_call({**rec, "ok": True})
                return self._logged(ActResult(True, text, text, attempt, total, None, messages))  # type: ignore[arg-type]
            try:
                value = validator(text)
            except Invalid as e:
                error = str(e)
                self.on_call({**rec, "ok": False, "validation_error": error})
                messages.append({"role": "user", "content": error})
                continue
            except Exception as e:  # a broken validator: the call still happened and is recorded
                self.on_call({**rec, "ok": False, "validation_error": f"validator crashed: {type(e).__name__}: {e}"})
                self._logged(ActResult(False, None, text, attempt, total, f"{type(e).__name__}: {e}", messages))
                raise
            self.on_call({**rec, "ok": True})
            return self._logged(ActResult(True, value, text, attempt, total, None, messages))
        return self._logged(ActResult(False, None, text, max_retries + 1, total, error, messages))
