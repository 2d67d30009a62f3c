"""``Ledger``: what a run has spent (USD, tokens, model calls, wall time) against its caps.

Independent of the loop: feed it each call (``add``, ``add_usage`` or ``add_record`` with a journal
``llm_call`` record) and ask ``exceeded()`` between calls or nodes; it returns the reason a cap is
reached (``"budget.max_usd: spent 1.0012 USD, cap 1"``) or None. A cap of None is no cap. A cap is
reached when the amount spent is at or above it, so at most the call in flight runs past it.

``GuardedModel(inner, ledger)`` refuses to start a call once a cap is reached
(:class:`~speedrunner.llm.errors.BudgetExceeded`); it does not count calls itself.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

from speedrunner.core.types import Completion, Message, Model, Usage
from speedrunner.llm.errors import BudgetExceeded

CAPS = ("max_usd", "max_tokens", "max_llm_calls", "max_wall_minutes")


class Ledger:
    def __init__(self, max_usd: float | None = None, max_tokens: int | None = None,
                 max_llm_calls: int | None = None, max_wall_minutes: float | None = None, *,
                 wall_s_before: float = 0.0, clock: Callable[[], float] = time.monotonic):
        self.max_usd = max_usd
        self.max_tokens = max_tokens
        self.max_llm_calls = max_llm_calls
        self.max_wall_minutes = max_wall_minutes
        for cap in CAPS:
            v = getattr(self, cap)
            if v is not None and float(v) < 0:
                raise ValueError(f"budget.{cap} must be 0 or more, or null for no cap")
        self.usd = 0.0
        self.tokens_in = 0
        self.tokens_out = 0
        self.llm_calls = 0
        self.wall_s_before = float(wall_s_before)  # wall time of earlier sessions of a resumed run
        self._clock = clock
        self._t0 = clock()

    @classmethod
    def from_caps(cls, caps: Any, **kw: Any) -> Ledger:
        """From a mapping with any of the cap keys (e.g. the ``budget`` config); others are ignored."""
        get = caps.get if hasattr(caps, "get") else (lambda k, d=None: getattr(caps, k, d))
        return cls(**{c: get(c, None) for c in CAPS}, **kw)

    # ------------------------------------------------------------------ counting
    def add(self, tokens_in: int = 0, tokens_out: int = 0, usd: float = 0.0, calls: int = 1) -> None:
        self.tokens_in += int(tokens_in or 0)
        self.tokens_out += int(tokens_out or 0)
        self.usd += float(usd or 0.0)
        self.llm_calls += int(calls)

    def add_usage(self, usage: Usage) -> None:
        self.add(usage.tokens_in, usage.tokens_out, usage.usd)

    def add_record(self, rec: dict[str, Any]) -> None:
        """A journal ``llm_call`` record (a failed call counts as a call, with what it reports)."""
        self.add(rec.get("tokens_in", 0), rec.get("tokens_out", 0), rec.get("usd", 0.0))

    def add_records(self, recs: Iterable[dict[str, Any]]) -> None:
        for r in recs:
            self.add_record(r)

    # ------------------------------------------------------------------ reading
    @property
    def tokens(self) -> int:
        return self.tokens_in + self.tokens_out

    @property
    def wall_s(self) -> float:
        return self.wall_s_before + (self._clock() - self._t0)

    def exceeded(self) -> str | None:
        """The reason the first cap reached is reached, or None."""
        if self.max_usd is not None and self.usd >= float(self.max_usd):
            return f"budget.max_usd: spent {self.usd:.4f} USD, cap {float(self.max_usd):g}"
        if self.max_tokens is not None and self.tokens >= int(self.max_tokens):
            return f"budget.max_tokens: used {self.tokens} tokens, cap {int(self.max_tokens)}"
        if self.max_llm_calls is not None and self.llm_calls >= int(self.max_llm_calls):
            return f"budget.max_llm_calls: made {self.llm_calls} calls, cap {int(self.max_llm_calls)}"
        if self.max_wall_minutes is not None and self.wall_s >= float(self.max_wall_minutes) * 60:
            return f"budget.max_wall_minutes: ran {self.wall_s / 60:.2f} min, cap {float(self.max_wall_minutes):g}"
        return None

    def check(self) -> None:
        """Raise :class:`BudgetExceeded` if a cap is reached."""
        reason = self.exceeded()
        if reason:
            raise BudgetExceeded(reason)

    def to_json(self) -> dict[str, Any]:
        """The spend, in summary.json's keys."""
        return {"usd": round(self.usd, 6), "tokens_in": self.tokens_in, "tokens_out": self.tokens_out,
                "llm_calls": self.llm_calls, "wall_s": round(self.wall_s, 2)}

    def caps(self) -> dict[str, Any]:
        return {c: getattr(self, c) for c in CAPS}


class GuardedModel:
    """Refuses to start a call once ``ledger`` has reached a cap. Counting stays with whoever feeds the
    ledger (the loop, from its journal records), so nothing is counted twice."""

    def __init__(self, inner: Model, ledger: Ledger):
        self.inner = inner
        self.ledger = ledger
        self.name = inner.name

    def resume(self, calls: list[dict[str, Any]]) -> None:
        if hasattr(self.inner, "resume"):
            self.inner.resume(calls)

    def complete(self, messages: list[Message]) -> Completion:
        self.ledger.check()
        return self.inner.complete(messages)
