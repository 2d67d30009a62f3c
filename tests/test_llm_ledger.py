"""The budget ledger: every cap, its reason string, journal records, wall time, and the call guard."""

from __future__ import annotations

import pytest

from speedrunner.core.types import Completion, Usage
from speedrunner.llm.errors import BudgetExceeded
from speedrunner.llm.ledger import GuardedModel, Ledger


class Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_no_caps_never_stop():
    led = Ledger()
    led.add(10**9, 10**9, 10**6, calls=10**6)
    assert led.exceeded() is None


def test_usd_cap():
    led = Ledger(max_usd=1.0)
    led.add_usage(Usage(tokens_in=100, tokens_out=10, usd=0.6))
    assert led.exceeded() is None
    led.add_usage(Usage(usd=0.4))
    assert led.exceeded() == "budget.max_usd: spent 1.0000 USD, cap 1"
    assert led.to_json()["usd"] == 1.0 and led.llm_calls == 2


def test_token_cap_counts_in_and_out():
    led = Ledger(max_tokens=1000)
    led.add(tokens_in=600, tokens_out=399)
    assert led.exceeded() is None
    led.add(tokens_out=1)
    assert led.exceeded().startswith("budget.max_tokens: used 1000 tokens")


def test_call_cap_from_journal_records():
    led = Ledger(max_llm_calls=3)
    recs = [{"event": "llm_call", "tokens_in": 5, "tokens_out": 2, "usd": 0.001},
            {"event": "llm_call", "ok": False, "model_error": "FatalModelError: x"}]
    led.add_records(recs)
    assert led.exceeded() is None and (led.tokens_in, led.tokens_out, led.llm_calls) == (5, 2, 2)
    led.add_record({"tokens_in": 1})
    assert led.exceeded() == "budget.max_llm_calls: made 3 calls, cap 3"


def test_wall_cap_includes_earlier_sessions():
    clock = Clock()
    led = Ledger(max_wall_minutes=2, wall_s_before=60, clock=clock)
    clock.t += 59
    assert led.exceeded() is None
    clock.t += 1
    assert led.exceeded().startswith("budget.max_wall_minutes: ran 2.00 min")
    assert led.to_json()["wall_s"] == 120.0


def test_raising_a_cap_lets_the_run_go_on():
    led = Ledger(max_llm_calls=1)
    led.add()
    assert led.exceeded()
    led.max_llm_calls = 5
    assert led.exceeded() is None


def test_from_caps_and_validation():
    led = Ledger.from_caps({"max_nodes": 20, "max_usd": 2.5, "max_tokens": None})
    assert led.caps() == {"max_usd": 2.5, "max_tokens": None, "max_llm_calls": None, "max_wall_minutes": None}
    with pytest.raises(ValueError):
        Ledger(max_usd=-1)
    zero = Ledger(max_llm_calls=0)
    assert zero.exceeded()  # a zero cap stops before the first call


def test_guarded_model_refuses_calls_past_a_cap():
    class Echo:
        name = "echo"
        calls = 0

        def complete(self, messages):
            Echo.calls += 1
            return Completion(text="ok", usage=Usage(usd=0.5))

    led = Ledger(max_usd=1.0)
    m = GuardedModel(Echo(), led)
    for _ in range(2):
        led.add_usage(m.complete([]).usage)
    with pytest.raises(BudgetExceeded, match="max_usd"):
        m.complete([])
    assert Echo.calls == 2
