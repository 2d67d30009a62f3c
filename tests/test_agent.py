"""Agent.act: system prompt on every call, validator feedback, retries, per-attempt records."""

from __future__ import annotations

import copy

import pytest

from speedrunner.agents.agent import Agent, Invalid, split_reasoning
from speedrunner.core.types import Completion, Usage

SYSTEM = "You are a careful research engineer. SYSTEM-MARKER-42"


class FakeModel:
    """Plays replies in order and keeps a deep copy of the messages of every call."""

    name = "fake"

    def __init__(self, replies, usage: Usage | None = None):
        self.replies = list(replies)
        self.calls: list[list[dict[str, str]]] = []
        self.usage = usage

    def complete(self, messages):
        self.calls.append(copy.deepcopy(messages))
        reply = self.replies[min(len(self.calls) - 1, len(self.replies) - 1)]
        if isinstance(reply, BaseException):
            raise reply
        u = self.usage or Usage(tokens_in=sum(len(m["content"]) for m in messages), tokens_out=len(reply))
        return Completion(text=reply, usage=Usage(u.tokens_in, u.tokens_out, u.latency_s, u.usd))


def only_digits(text: str) -> int:
    if not text.strip().isdigit():
        raise Invalid(f"reply {text!r} is not a number; answer with digits only")
    return int(text.strip())


def make(replies, **kw):
    model = FakeModel(replies, **kw)
    records: list[dict] = []
    return model, Agent(model, SYSTEM, "coder", on_call=records.append), records


def test_success_on_first_try():
    model, agent, records = make(["42"])
    res = agent.act("How much?", only_digits)
    assert res.ok and res.value == 42 and res.attempts == 1 and res.error is None
    assert len(model.calls) == 1
    assert model.calls[0] == [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "How much?"}]


def test_system_prompt_is_the_first_message_of_every_call_including_retries():
    model, agent, _ = make(["no", "still no", "nope", "7"])
    res = agent.act("How much?", only_digits, max_retries=3)
    assert res.ok and res.value == 7
    assert len(model.calls) == 4
    for msgs in model.calls:
        assert msgs[0] == {"role": "system", "content": SYSTEM}
        assert sum(1 for m in msgs if m["role"] == "system") == 1
        assert msgs[1] == {"role": "user", "content": "How much?"}


def test_validator_feedback_is_appended_and_seen_on_the_retry():
    model, agent, _ = make(["lots", "12"])
    res = agent.act("How much?", only_digits, max_retries=2)
    assert res.ok and res.value == 12
    retry = model.calls[1]
    assert [m["role"] for m in retry] == ["system", "user", "assistant", "user"]
    assert retry[2]["content"] == "lots"
    assert "'lots' is not a number" in retry[3]["content"]
    # the transcript holds the whole exchange, the accepted reply last
    assert [m["role"] for m in res.transcript] == ["system", "user", "assistant", "user", "assistant"]
    assert res.transcript[-1]["content"] == "12"


@pytest.mark.parametrize("max_retries", [0, 1, 3])
def test_max_retries_is_respected(max_retries):
    model, agent, records = make(["never a number"])
    res = agent.act("How much?", only_digits, max_retries=max_retries)
    assert not res.ok
    assert res.value is None
    assert len(model.calls) == max_retries + 1
    assert res.attempts == max_retries + 1
    assert len(records) == max_retries + 1
    assert "is not a number" in res.error


def test_on_call_records_every_attempt():
    model, agent, records = make(["x", "y", "5"], usage=Usage(tokens_in=100, tokens_out=7, latency_s=0.25))
    res = agent.act("How much?", only_digits, max_retries=4)
    assert res.ok
    assert len(records) == 3
    assert [r["attempt"] for r in records] == [1, 2, 3]
    assert [r["ok"] for r in records] == [False, False, True]
    for r in records:
        assert r["role"] == "coder"
        assert r["model"] == "fake"
        assert r["tokens_in"] == 100 and r["tokens_out"] == 7
        assert r["latency_s"] == pytest.approx(0.25)
    assert "'x' is not a number" in records[0]["validation_error"]
    assert "'y' is not a number" in records[1]["validation_error"]
    assert "validation_error" not in records[2]
    assert res.usage.tokens_in == 300 and res.usage.tokens_out == 21
    assert res.usage.latency_s == pytest.approx(0.75)


def test_latency_is_measured_when_the_model_reports_none():
    model, agent, records = make(["1"], usage=Usage(tokens_in=1, tokens_out=1, latency_s=0.0))
    agent.act("q", only_digits)
    assert records[0]["latency_s"] >= 0.0
    assert isinstance(records[0]["latency_s"], float)


def test_no_validator_returns_the_text():
    model, agent, records = make(["free text"])
    res = agent.act("Say something")
    assert res.ok and res.value == "free text" and res.text == "free text"
    assert len(records) == 1 and records[0]["ok"] is True


def test_think_block_is_stripped_from_the_parsed_text():
    seen = []

    def validator(text):
        seen.append(text)
        return only_digits(text)

    model, agent, records = make(["<think>maybe 41? no, 3 and 4 and 5</think>\n 9 "])
    res = agent.act("How much?", validator)
    assert res.ok and res.value == 9
    assert seen == ["9"]
    assert "<think>" not in res.text and "maybe 41" not in res.text
    assert "maybe 41" in records[0]["reasoning"]
    # the reasoning is not sent back to the model either
    model2, agent2, _ = make(["<THINK>secret plan</THINK>nope", "3"])
    agent2.act("How much?", only_digits)
    assert all("secret plan" not in m["content"] for m in model2.calls[1])


def test_split_reasoning_keeps_the_backend_reasoning_and_several_blocks():
    text, reasoning = split_reasoning("<think>a</think>x<think>b</think>y", "r0")
    assert text == "xy"
    assert reasoning == "r0\n\na\n\nb"
    assert split_reasoning("plain", None) == ("plain", None)


def test_model_exception_ends_act_without_raising():
    model, agent, records = make([RuntimeError("rate limited")])
    res = agent.act("How much?", only_digits, max_retries=3)
    assert not res.ok
    assert res.value is None
    assert "RuntimeError" in res.error and "rate limited" in res.error
    assert len(model.calls) == 1  # a model failure is not retried here
    assert len(records) == 1
    assert records[0]["ok"] is False and "rate limited" in records[0]["model_error"]


def test_model_exception_on_a_retry_ends_act_without_raising():
    model, agent, records = make(["bad", ConnectionError("socket closed")])
    res = agent.act("How much?", only_digits, max_retries=3)
    assert not res.ok and res.attempts == 2
    assert "socket closed" in res.error
    assert [r["ok"] for r in records] == [False, False]
    assert "validation_error" in records[0] and "model_error" in records[1]


def test_each_act_starts_a_fresh_conversation():
    model, agent, _ = make(["bad", "1", "2"])
    agent.act("first", only_digits)
    agent.act("second", only_digits)
    last = model.calls[-1]
    assert [m["role"] for m in last] == ["system", "user"]
    assert last[1]["content"] == "second"
