"""LiteLLMModel against a real HTTP server on 127.0.0.1 that speaks the chat-completions protocol.

Everything goes through litellm (``model=openai_compatible``, or ``provider: openai`` pointed at the
fake server for price-map and model-name checks): retries and backoff (requests are counted), fail-fast
on 401/400, timeouts, streaming, costs, reasoning kept out of the text, and keys kept out of everything
the model returns or raises.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import time

import pytest
from llm_fake_server import FakeLLMServer, loopback_only

from speedrunner.agents.agent import Agent
from speedrunner.core.errors import UserError
from speedrunner.llm.errors import FatalModelError, ModelMismatchError, TransientModelError
from speedrunner.llm.factory import build_model, build_role_models
from speedrunner.llm.provider import LiteLLMModel, ModelConfig, same_model

# litellm's own deprecation noise under the installed pydantic
pytestmark = [pytest.mark.filterwarnings("ignore::DeprecationWarning:litellm.*"),
              pytest.mark.filterwarnings("ignore:.*ReadOnly.*:UserWarning")]

KEY = "sk-planted-SECRET-0123456789abcdef"
MSGS = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Say hello."}]


@pytest.fixture(autouse=True, scope="module")
def no_network():
    """Nothing here may reach past loopback (litellm must not fetch prices or anything else)."""
    with loopback_only() as attempts:
        yield
    assert attempts == []


@pytest.fixture(scope="module")
def server():
    with FakeLLMServer() as srv:
        yield srv


@pytest.fixture
def srv(server):
    server.script.clear()
    server.requests.clear()
    server.fallback = {"content": "hello"}
    return server


def cfg_for(srv: FakeLLMServer, **over) -> dict:
    cfg = {"name": "fake", "provider": "openai_compatible", "base_url": srv.base_url, "api_key_env": None,
           "max_retries": 3, "backoff_base_s": 0.01, "backoff_max_s": 0.05, "timeout_s": 5,
           "input_usd_per_mtok": 1.0, "output_usd_per_mtok": 2.0}
    cfg.update(over)
    return cfg


def model_for(srv: FakeLLMServer, sleeps: list[float] | None = None, **over) -> LiteLLMModel:
    def sleep(s: float) -> None:
        if sleeps is not None:
            sleeps.append(s)
        time.sleep(min(s, 0.05))

    return LiteLLMModel.from_config(ModelConfig.from_dict(cfg_for(srv, **over)), sleep=sleep, rng=random.Random(0))


def dump(obj) -> str:
    return json.dumps(dataclasses.asdict(obj) if dataclasses.is_dataclass(obj) else obj, default=str)


# ---------------------------------------------------------------------------------------------- answers
def test_reply_usage_cost_and_meta(srv):
    srv.push({"content": "hello there", "usage": {"prompt_tokens": 1000, "completion_tokens": 500}})
    m = build_model(cfg_for(srv), task=None, coder_cls=None)
    c = m.complete(MSGS)
    assert c.text == "hello there" and c.reasoning is None
    assert (c.usage.tokens_in, c.usage.tokens_out) == (1000, 500)
    assert c.usage.usd == pytest.approx(1000 * 1.0 / 1e6 + 500 * 2.0 / 1e6)
    assert c.usage.latency_s > 0
    assert c.meta["provider_model"] == "fake" and c.meta["usd_source"] == "config" and c.meta["retries"] == 0
    body = srv.chat_requests()[0]["body"]
    assert body["model"] == "fake" and body["messages"] == MSGS  # the name is sent as written
    assert "temperature" not in body and "max_tokens" not in body  # unset: the provider's default


def test_sampling_parameters_are_sent(srv):
    m = model_for(srv, temperature=0.3, max_tokens=77, params={"top_k": 5})
    m.complete(MSGS)
    body = srv.chat_requests()[0]["body"]
    assert body["temperature"] == 0.3 and body["max_tokens"] == 77
    assert body.get("top_k") == 5 or body.get("extra_body", {}).get("top_k") == 5


@pytest.mark.parametrize("field", ["reasoning_content", "reasoning"])
def test_reasoning_field_goes_to_reasoning_never_text(srv, field):
    srv.push({"content": "final answer", "reasoning": "step 1: think hard", "reasoning_field": field})
    c = model_for(srv).complete(MSGS)
    assert c.text == "final answer"
    assert c.reasoning == "step 1: think hard"
    assert "think hard" not in c.text


def test_agent_records_reasoning_apart_and_strips_think_tags(srv):
    srv.push({"content": "<think>inline musing</think>the edit", "reasoning": "provider trace"})
    recs: list[dict] = []
    res = Agent(model_for(srv), "system", "coder", on_call=recs.append).act("go")
    assert res.ok and res.text == "the edit"
    assert "musing" not in res.text and "provider trace" not in res.text
    assert "provider trace" in recs[0]["reasoning"] and "inline musing" in recs[0]["reasoning"]
    assert recs[0]["provider_model"] == "fake" and recs[0]["tokens_in"] > 0


def test_missing_usage_is_estimated(srv):
    srv.push({"content": "x" * 400, "usage": None})
    c = model_for(srv).complete(MSGS)
    assert c.meta.get("usage_estimated") is True
    assert c.usage.tokens_out == 100 and c.usage.tokens_in > 0


def test_streaming(srv):
    srv.push({"content": "streamed answer text", "reasoning": "streamed thoughts", "model": "fake-v2",
              "usage": {"prompt_tokens": 10, "completion_tokens": 20}})
    c = model_for(srv, stream=True).complete(MSGS)
    assert c.text == "streamed answer text" and c.reasoning == "streamed thoughts"
    assert (c.usage.tokens_in, c.usage.tokens_out) == (10, 20)
    assert c.meta["provider_model"] == "fake-v2"  # the server's name, not the one asked for
    assert srv.chat_requests()[0]["body"]["stream"] is True


def test_streaming_total_timeout(srv):
    srv.push({"content": "a b c d e f g h", "chunk_delay": 0.25})
    t0 = time.monotonic()
    with pytest.raises(TransientModelError, match="not finished after"):
        model_for(srv, stream=True, timeout_s=0.4, max_retries=0).complete(MSGS)
    assert time.monotonic() - t0 < 2.0
    assert len(srv.chat_requests()) == 1


# ---------------------------------------------------------------------------------------------- faults
@pytest.mark.parametrize("fault", [{"status": 429}, {"status": 500}, {"status": 503}, {"drop": True},
                                   {"malformed": True}])
def test_transient_fault_then_success_is_retried(srv, fault):
    srv.push(fault, fault, {"content": "finally"})
    sleeps: list[float] = []
    c = model_for(srv, sleeps).complete(MSGS)
    assert c.text == "finally"
    assert len(srv.chat_requests()) == 3
    assert c.meta["retries"] == 2
    # exponential backoff with jitter: attempt k waits base * 2**k * U(0.5, 1)
    assert len(sleeps) == 2
    assert 0.005 <= sleeps[0] <= 0.01 and 0.01 <= sleeps[1] <= 0.02


def test_backoff_grows_exponentially_to_the_cap(srv):
    m = model_for(srv, backoff_base_s=1.0, backoff_max_s=8.0)
    err = RuntimeError("x")
    delays = [m._backoff(k, err) for k in range(6)]
    for k, d in enumerate(delays):
        full = min(8.0, 2.0 ** k)
        assert full * 0.5 <= d <= full
    assert len({round(d, 6) for d in delays}) == len(delays)  # jittered


def test_retry_after_is_honoured(srv):
    srv.push({"status": 429, "retry_after": 0.3}, {"content": "ok"})
    sleeps: list[float] = []
    model_for(srv, sleeps, backoff_max_s=1.0).complete(MSGS)
    assert sleeps and sleeps[0] >= 0.3


def test_retries_give_up(srv):
    srv.push(*[{"status": 429, "error_message": "slow down"}] * 3)
    with pytest.raises(TransientModelError, match="gave up after 3 attempt") as ei:
        model_for(srv, max_retries=2).complete(MSGS)
    assert "slow down" in str(ei.value)
    assert len(srv.chat_requests()) == 3


def test_timeout_per_attempt(srv):
    srv.push({"delay": 1.5, "content": "late"}, {"delay": 1.5, "content": "late"})
    t0 = time.monotonic()
    with pytest.raises(TransientModelError, match="(?i)timeout|timed out"):
        model_for(srv, timeout_s=0.3, max_retries=1).complete(MSGS)
    assert time.monotonic() - t0 < 1.4
    assert len(srv.chat_requests()) == 2


@pytest.mark.parametrize("code,message", [(401, "Incorrect API key provided"), (400, "messages: bad role 'x'"),
                                          (403, "model not allowed for this key"), (404, "no such model")])
def test_client_errors_fail_fast_with_the_providers_message(srv, code, message, monkeypatch):
    monkeypatch.setenv("FAKE_LLM_KEY", KEY)
    srv.push({"status": code, "error_message": f"{message}: {KEY}"})
    m = model_for(srv, api_key_env="FAKE_LLM_KEY")
    t0 = time.monotonic()
    with pytest.raises(FatalModelError) as ei:
        m.complete(MSGS)
    assert time.monotonic() - t0 < 1.0
    assert len(srv.chat_requests()) == 1  # never retried
    assert message in str(ei.value) and str(code) in str(ei.value)
    assert KEY not in str(ei.value) and KEY[-8:] not in str(ei.value)
    assert ei.value.__cause__ is None and ei.value.__context__ is None  # no provider exception chained
    assert srv.chat_requests()[0]["headers"]["Authorization"] == f"Bearer {KEY}"


def test_agent_turns_model_errors_into_a_failed_attempt(srv):
    srv.push({"status": 401, "error_message": "bad key"})
    recs: list[dict] = []
    res = Agent(model_for(srv), "system", "coder", on_call=recs.append).act("go")
    assert not res.ok and "FatalModelError" in res.error and "bad key" in res.error
    assert recs[0]["ok"] is False


# ---------------------------------------------------------------------------------------------- model identity and price
def test_price_map_and_model_check_for_a_known_model(srv, monkeypatch):
    monkeypatch.setenv("FAKE_OPENAI_KEY", KEY)
    cfg = {"name": "gpt-4o", "provider": "openai", "base_url": srv.base_url, "api_key_env": "FAKE_OPENAI_KEY",
           "max_retries": 0, "timeout_s": 5}
    m = build_model(cfg, task=None, coder_cls=None)
    srv.push({"content": "ok", "model": "gpt-4o-2024-08-06", "usage": {"prompt_tokens": 1000, "completion_tokens": 100}})
    c = m.complete(MSGS)
    assert c.meta["usd_source"] == "litellm" and c.meta["provider_model"] == "gpt-4o-2024-08-06"
    assert c.usage.usd == pytest.approx(1000 * 2.5e-6 + 100 * 1e-5)  # litellm 1.106.2's gpt-4o prices
    assert srv.chat_requests()[0]["body"]["model"] == "gpt-4o"
    srv.push({"content": "ok", "model": "gpt-4o-mini-2024-07-18"})
    with pytest.raises(ModelMismatchError, match="gpt-4o-mini"):
        m.complete(MSGS)


def test_unknown_price_fails_at_build(srv):
    with pytest.raises(UserError, match="input_usd_per_mtok"):
        build_model(cfg_for(srv, input_usd_per_mtok=None, output_usd_per_mtok=None), None, None)


def test_same_model():
    assert same_model("gpt-4o", "gpt-4o-2024-08-06")
    assert same_model("o3-mini", "o3-mini-2025-01-31")
    assert same_model("gemini-2.5-pro", "models/gemini-2.5-pro")
    assert same_model("claude-3-7-sonnet-20250219", "claude-3-7-sonnet-20250219")
    assert not same_model("gpt-4o", "gpt-4o-mini")
    assert not same_model("gemini-2.5-pro", "gemini-2.5-flash")
    assert not same_model("o3-mini", "o1-mini")


# ---------------------------------------------------------------------------------------------- secrets
def test_missing_key_fails_at_build_naming_the_variable(srv, monkeypatch, tmp_path):
    monkeypatch.delenv("NOT_SET_ANYWHERE_KEY", raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SPEEDRUNNER_SECRETS", raising=False)
    with pytest.raises(UserError, match="NOT_SET_ANYWHERE_KEY"):
        build_model(cfg_for(srv, api_key_env="NOT_SET_ANYWHERE_KEY"), None, None)
    cfg = {"name": "gpt-4o", "provider": "openai", "api_key_env": "NOT_SET_ANYWHERE_KEY"}
    with pytest.raises(UserError, match="NOT_SET_ANYWHERE_KEY"):
        build_model(cfg, None, None)


def test_key_from_secrets_file_is_never_exported_or_returned(srv, monkeypatch, tmp_path):
    monkeypatch.delenv("FILE_ONLY_KEY", raising=False)
    sec = tmp_path / "secrets.yaml"
    sec.write_text(f"FILE_ONLY_KEY: {KEY}\n")
    monkeypatch.setenv("SPEEDRUNNER_SECRETS", str(sec))
    env_before = dict(os.environ)
    m = build_model(cfg_for(srv, api_key_env="FILE_ONLY_KEY"), None, None)
    srv.push({"content": "ok", "reasoning": "why"})
    c = m.complete(MSGS)
    recs: list[dict] = []
    Agent(m, "system", "coder", on_call=recs.append).act("go")
    assert srv.chat_requests()[0]["headers"]["Authorization"] == f"Bearer {KEY}"
    assert dict(os.environ) == env_before and KEY not in json.dumps(dict(os.environ))
    assert KEY not in dump(c) and KEY not in json.dumps(recs, default=str)
    assert KEY not in repr(m.__dict__) and KEY not in repr(m.cfg)


def test_secrets_file_in_cwd(srv, monkeypatch, tmp_path):
    monkeypatch.delenv("CWD_FILE_KEY", raising=False)
    monkeypatch.delenv("SPEEDRUNNER_SECRETS", raising=False)
    (tmp_path / "secrets.yaml").write_text(f"CWD_FILE_KEY: {KEY}\n")
    monkeypatch.chdir(tmp_path)
    m = build_model(cfg_for(srv, api_key_env="CWD_FILE_KEY"), None, None)
    m.complete(MSGS)
    assert srv.chat_requests()[0]["headers"]["Authorization"] == f"Bearer {KEY}"


def test_bad_secrets_file_does_not_echo_its_content(monkeypatch, tmp_path):
    sec = tmp_path / "secrets.yaml"
    sec.write_text(f"A_KEY: {KEY}\n  bad: [indent\n")
    monkeypatch.setenv("SPEEDRUNNER_SECRETS", str(sec))
    monkeypatch.delenv("A_KEY", raising=False)
    from speedrunner.llm.secrets import lookup

    with pytest.raises(UserError) as ei:
        lookup("A_KEY")
    assert KEY not in str(ei.value)


# ---------------------------------------------------------------------------------------------- config
def test_config_errors_are_user_errors(srv):
    with pytest.raises(UserError, match="base_url"):
        build_model({"name": "x", "provider": "openai_compatible", "base_url": "???"}, None, None)
    with pytest.raises(UserError, match="model.name"):
        build_model({"name": "???", "provider": "openai_compatible", "base_url": srv.base_url}, None, None)
    with pytest.raises(UserError, match="unknown key"):
        build_model(cfg_for(srv, temprature=0.1), None, None)


def test_role_models_share_equal_configs(srv):
    base = cfg_for(srv)
    other = cfg_for(srv, name="fake-coder")
    models = build_role_models({"model": base, "models": {"coder": other}}, None, None)
    assert models["ideator"] is models["analyst"] and models["coder"] is not models["ideator"]
    assert models["coder"].name == "fake-coder"
    srv.push({"content": "c"})
    models["coder"].complete(MSGS)
    assert srv.chat_requests()[-1]["body"]["model"] == "fake-coder"


def test_every_shipped_model_config_composes(monkeypatch):
    from pathlib import Path

    from speedrunner.runner import compose

    conf = Path(__file__).resolve().parent.parent / "src" / "speedrunner" / "conf" / "model"
    names = sorted(p.stem for p in conf.glob("*.yaml"))
    assert {"o3_mini", "gpt_4o", "claude_3_7_sonnet", "gemini_2_5_pro", "deepseek_r1", "openai_compatible",
            "azure", "bedrock", "local"} <= set(names)
    for var in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "GEMINI_API_KEY", "DEEPSEEK_API_KEY", "AZURE_API_KEY",
                "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(var, KEY)
    for name in ("o3_mini", "gpt_4o", "gpt_5", "claude_3_7_sonnet", "claude_sonnet_4_5", "gemini_2_5_pro",
                 "deepseek_r1", "bedrock"):
        m = build_model(compose([f"model={name}"]).model, None, None)
        assert isinstance(m, LiteLLMModel) and KEY not in repr(m.__dict__)
    az = build_model(compose(["model=azure", "model.name=my-deploy", "model.base_url=https://x.invalid"]).model,
                     None, None)
    assert az.cfg.route == "azure/my-deploy"


def test_per_role_models_from_hydra_overrides(srv):
    from speedrunner.runner import compose

    cfg = compose(["model=openai_compatible", "model.name=ideas-model", f"model.base_url={srv.base_url}",
                   "+model@models.coder=openai_compatible", "models.coder.name=code-model",
                   f"models.coder.base_url={srv.base_url}"])
    models = build_role_models(cfg, None, None)
    assert models["ideator"].name == "ideas-model" and models["coder"].name == "code-model"
    assert models["analyst"] is models["ideator"]
