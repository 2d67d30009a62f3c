"""The response cache: content addressing, occurrence indices, resume from journal records, strict
(replay) mode, and a real provider model behind it (requests to the fake server are counted)."""

from __future__ import annotations

import json

import pytest
from llm_fake_server import FakeLLMServer

from speedrunner.agents.agent import Agent
from speedrunner.core.types import Completion, Usage
from speedrunner.llm.cache import CachingModel, ReplayedFailure, ResponseCache, request_key
from speedrunner.llm.errors import CacheMiss, TransientModelError
from speedrunner.llm.factory import build_model

pytestmark = [pytest.mark.filterwarnings("ignore::DeprecationWarning:litellm.*"),
              pytest.mark.filterwarnings("ignore:.*ReadOnly.*:UserWarning")]

MSGS = [{"role": "system", "content": "s"}, {"role": "user", "content": "draft something"}]


class Counting:
    """A stand-in provider: answers 'answer N' and counts its calls; can be told to fail."""

    name = "counting"

    def __init__(self, temperature: float = 1.0):
        self.calls = 0
        self.fail_next = False
        self.temperature = temperature

    def identity(self):
        return {"provider": "test", "name": self.name, "sampling": {"temperature": self.temperature}}

    def complete(self, messages):
        if self.fail_next:
            self.fail_next = False
            raise TransientModelError("provider down")
        self.calls += 1
        return Completion(text=f"answer {self.calls}", reasoning=f"why {self.calls}",
                          usage=Usage(tokens_in=10, tokens_out=5, usd=0.01), meta={"provider_model": "counting"})


def test_identical_requests_get_successive_samples_and_replay_in_order(tmp_path):
    db = tmp_path / "cache.sqlite"
    inner = Counting()
    m = CachingModel(inner, ResponseCache(db))
    first = [m.complete(MSGS) for _ in range(3)]
    assert [c.text for c in first] == ["answer 1", "answer 2", "answer 3"]  # three samples, not one
    assert [c.meta["occurrence"] for c in first] == [0, 1, 2]
    assert all(c.meta["cached"] is False for c in first)
    assert len({c.meta["cache_key"] for c in first}) == 1
    assert first[0].usage.usd == 0.01

    inner2 = Counting()  # a new process: same file, fresh counters
    m2 = CachingModel(inner2, ResponseCache(db))
    again = [m2.complete(MSGS) for _ in range(3)]
    assert [c.text for c in again] == ["answer 1", "answer 2", "answer 3"]
    assert [c.reasoning for c in again] == ["why 1", "why 2", "why 3"]
    assert all(c.meta["cached"] is True for c in again) and inner2.calls == 0
    assert all(c.usage.usd == 0 and c.usage.tokens_in == 0 for c in again)  # nothing paid
    assert again[0].meta["cached_usage"]["usd"] == 0.01 and again[0].meta["provider_model"] == "counting"
    fourth = m2.complete(MSGS)  # past what was stored: a miss, asked and stored
    assert fourth.text == "answer 1" and fourth.meta == {**fourth.meta, "cached": False, "occurrence": 3}
    assert inner2.calls == 1


def test_key_depends_on_model_messages_and_sampling():
    ident = {"provider": "p", "name": "m", "sampling": {"temperature": 1.0}}
    k = request_key(ident, MSGS)
    assert k == request_key(dict(ident), [dict(x) for x in MSGS])
    assert k != request_key({**ident, "name": "m2"}, MSGS)
    assert k != request_key({**ident, "sampling": {"temperature": 0.5}}, MSGS)
    assert k != request_key(ident, [*MSGS[:1], {"role": "user", "content": "draft something else"}])
    assert k != request_key(ident, MSGS, namespace="another run")


def test_resume_restores_occurrences_from_journal_records(tmp_path):
    """A run made two identical calls, kept one node (first call), crashed in the second: on resume the
    node made again asks the second occurrence and gets the stored answer, without paying."""
    db = tmp_path / "cache.sqlite"
    recs: list[dict] = []
    m = CachingModel(Counting(), ResponseCache(db))
    Agent(m, "s", "coder", on_call=recs.append).act("draft something")
    Agent(m, "s", "coder", on_call=recs.append).act("draft something")
    assert [r["occurrence"] for r in recs] == [0, 1] and all("cache_key" in r for r in recs)
    records = json.loads(json.dumps(recs))  # as they come back from journal.jsonl

    inner = Counting()
    m2 = CachingModel(inner, ResponseCache(db))
    m2.resume(records[:1])  # only the kept node's call
    res = Agent(m2, "s", "coder").act("draft something")
    assert res.text == "answer 2" and inner.calls == 0


def test_strict_mode_answers_only_from_the_cache(tmp_path):
    db = tmp_path / "cache.sqlite"
    m = CachingModel(Counting(), ResponseCache(db))
    m.complete(MSGS)
    replay = CachingModel(Counting(), ResponseCache(db, readonly=True), strict=True)
    assert replay.complete(MSGS).text == "answer 1"
    with pytest.raises(CacheMiss, match="occurrence 1"):
        replay.complete(MSGS)
    with pytest.raises(CacheMiss, match="never asked"):
        replay.complete([{"role": "user", "content": "something new"}])
    assert len(replay.misses) == 2 and replay.inner.calls == 0
    with pytest.raises(ValueError):
        CachingModel(Counting(), ResponseCache(db, readonly=True))  # read-only needs strict
    with pytest.raises(FileNotFoundError):
        ResponseCache(tmp_path / "absent.sqlite", readonly=True)


def test_failures_replay_as_failures_but_are_retried_outside_replay(tmp_path):
    db = tmp_path / "cache.sqlite"
    inner = Counting()
    m = CachingModel(inner, ResponseCache(db))
    inner.fail_next = True
    with pytest.raises(TransientModelError):
        m.complete(MSGS)
    assert m.complete(MSGS).text == "answer 1"  # occurrence 1

    replay = CachingModel(Counting(), ResponseCache(db, readonly=True), strict=True)
    with pytest.raises(ReplayedFailure, match="provider down"):
        replay.complete(MSGS)
    assert replay.complete(MSGS).text == "answer 1" and not replay.misses  # same order as the run

    again = CachingModel(Counting(), ResponseCache(db))
    assert again.complete(MSGS).text == "answer 1"  # occurrence 0 asked again: the failure is not kept
    assert again.inner.calls == 1


def test_replay_model_from_config_needs_no_key_or_network(tmp_path, monkeypatch):
    monkeypatch.delenv("REPLAY_TEST_KEY", raising=False)
    monkeypatch.delenv("SPEEDRUNNER_SECRETS", raising=False)
    monkeypatch.chdir(tmp_path)
    cfg = {"name": "gpt-4o", "provider": "openai", "api_key_env": "REPLAY_TEST_KEY", "temperature": 1.0}
    with FakeLLMServer(fallback={"content": "from the server"}) as srv:
        monkeypatch.setenv("REPLAY_TEST_KEY", "sk-x")
        live = build_model({**cfg, "base_url": srv.base_url, "max_retries": 0}, None, None,
                           cache=ResponseCache(tmp_path / "c.sqlite"))
        assert live.complete(MSGS).text == "from the server"
        assert live.complete(MSGS).meta["cached"] is False
        assert len(srv.chat_requests()) == 2
    monkeypatch.delenv("REPLAY_TEST_KEY")
    replay = build_model(cfg, None, None, cache=ResponseCache(tmp_path / "c.sqlite", readonly=True), replay=True)
    assert [replay.complete(MSGS).text for _ in range(2)] == ["from the server"] * 2
    with pytest.raises(CacheMiss):
        replay.complete(MSGS)


def test_cache_through_a_real_provider_counts_requests(tmp_path):
    with FakeLLMServer() as srv:
        srv.push({"content": "one", "reasoning": "r1"}, {"content": "two"})
        cfg = {"name": "fake", "provider": "openai_compatible", "base_url": srv.base_url, "max_retries": 0,
               "input_usd_per_mtok": 1.0, "output_usd_per_mtok": 1.0}
        cache = ResponseCache(tmp_path / "c.sqlite")
        m = build_model(cfg, None, None, cache=cache)
        assert [m.complete(MSGS).text for _ in range(2)] == ["one", "two"]
        cache.reset_counters()  # as a new process would start
        hit = m.complete(MSGS)
        assert (hit.text, hit.reasoning, hit.meta["cached"]) == ("one", "r1", True)
        assert len(srv.chat_requests()) == 2 and cache.count() == 2
