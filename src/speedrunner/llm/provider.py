"""``LiteLLMModel``: any provider litellm speaks (OpenAI, Anthropic, Gemini, DeepSeek, Azure, Bedrock,
OpenAI-compatible servers) behind the :class:`~speedrunner.core.types.Model` protocol.

What it guarantees:

- The configured model is the model asked for: ``provider/name`` is sent as written, and the
  ``model`` field of the provider's answer is checked against it (``check_model``) and recorded in
  ``Completion.meta["provider_model"]``. A provider that answers with another model raises
  :class:`~speedrunner.llm.errors.ModelMismatchError`.
- Reasoning fields (``reasoning_content``, Anthropic thinking, ...) go to ``Completion.reasoning``,
  never into ``Completion.text``.
- Retries with exponential backoff and jitter (honouring ``Retry-After``) on 429, 408, 5xx, timeouts,
  dropped connections and malformed answers; authentication, permission and bad-request errors fail at
  once with the provider's message (keys cut out). ``timeout_s`` bounds each attempt, streaming included.
- Cost per call from the model config's prices when set, else from litellm's bundled price map (read
  locally: ``LITELLM_LOCAL_MODEL_COST_MAP=True``); a model with neither fails when it is built.
- Keys are passed to litellm as arguments and held as :class:`~speedrunner.llm.secrets.Secret`.
"""

from __future__ import annotations

import copy
import logging
import os
import random
import re
import time
from dataclasses import dataclass, field
from typing import Any

from speedrunner.core.errors import UserError
from speedrunner.core.types import Completion, Message, Usage
from speedrunner.llm.errors import FatalModelError, ModelMismatchError, TransientModelError
from speedrunner.llm.secrets import Secret, lookup, redact, require

log = logging.getLogger("speedrunner.llm")

# Providers whose route is "<provider>/<name>" in litellm and that take an api_key.
KEYED_PROVIDERS = {"openai", "anthropic", "gemini", "deepseek", "azure", "openrouter", "together_ai",
                   "fireworks_ai", "groq", "mistral", "xai"}
# Providers that answer with the model they ran; for these check_model defaults to "name".
CHECKED_PROVIDERS = {"openai", "anthropic", "gemini", "deepseek"}
OPENAI_COMPATIBLE = {"openai_compatible", "local"}
RETRY_STATUS = {408, 409, 425, 429}
NO_KEY = "no-key"  # what an OpenAI-compatible server without authentication is sent

_litellm = None


def import_litellm() -> Any:
    """litellm, imported once, with its price map read from the installed package (never fetched)."""
    global _litellm
    if _litellm is None:
        os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
        try:
            import litellm
        except ImportError:
            raise UserError("this model needs litellm: pip install 'litellm==1.106.2' (the version "
                            "speedrunner is tested with)") from None
        litellm.suppress_debug_info = True
        litellm.telemetry = False
        litellm.drop_params = False  # an unsupported parameter is an error, never silently dropped
        _litellm = litellm
    return _litellm


@dataclass
class ModelConfig:
    """The keys of a ``conf/model/*.yaml`` file for a provider model (see docs/MODELS.md)."""

    name: str
    provider: str
    base_url: str | None = None
    api_key_env: str | None = None
    api_version: str | None = None  # Azure
    credentials: dict[str, str] = field(default_factory=dict)  # litellm kwarg -> variable (required)
    optional_credentials: dict[str, str] = field(default_factory=dict)  # the same, when set
    temperature: float | None = None
    max_tokens: int | None = None
    top_p: float | None = None
    seed: int | None = None
    params: dict[str, Any] = field(default_factory=dict)  # more litellm kwargs (reasoning_effort, ...)
    timeout_s: float = 600.0
    max_retries: int = 6
    backoff_base_s: float = 2.0
    backoff_max_s: float = 60.0
    stream: bool = False
    check_model: str | None = None  # "name" | "off"; None: "name" for CHECKED_PROVIDERS
    input_usd_per_mtok: float | None = None
    output_usd_per_mtok: float | None = None
    price_as: str | None = None  # price this model as another litellm model, e.g. azure/gpt-4o

    KNOWN = ("name", "provider", "base_url", "api_key_env", "api_version", "credentials", "optional_credentials",
             "temperature", "max_tokens", "top_p", "seed", "params", "timeout_s", "max_retries", "backoff_base_s",
             "backoff_max_s", "stream", "check_model", "input_usd_per_mtok", "output_usd_per_mtok", "price_as")

    @classmethod
    def from_dict(cls, cfg: dict[str, Any], ignore: tuple[str, ...] = ()) -> ModelConfig:
        unknown = sorted(set(cfg) - set(cls.KNOWN) - set(ignore))
        if unknown:
            raise UserError(f"model: unknown key(s) {', '.join(unknown)}; known: {', '.join(cls.KNOWN)}")
        for key in ("name", "provider"):
            if cfg.get(key) in (None, "", "???"):
                raise UserError(f"model.{key} must be set (e.g. model.{key}=...)")
        kw = {k: cfg[k] for k in cls.KNOWN if k in cfg and cfg[k] is not None}
        for key in ("credentials", "optional_credentials", "params"):
            kw[key] = dict(kw.get(key) or {})
        mc = cls(**kw)
        mc.name, mc.provider = str(mc.name), str(mc.provider)
        if mc.base_url == "???":
            raise UserError(f"model.base_url must be set for provider {mc.provider} "
                            "(e.g. model.base_url=http://127.0.0.1:8000/v1)")
        if mc.provider in OPENAI_COMPATIBLE and not mc.base_url:
            raise UserError(f"model.base_url must be set for provider {mc.provider} (e.g. http://127.0.0.1:8000/v1)")
        if mc.check_model not in (None, "name", "off"):
            raise UserError(f"model.check_model: expected name or off, got {mc.check_model!r}")
        if (mc.input_usd_per_mtok is None) != (mc.output_usd_per_mtok is None):
            raise UserError("model.input_usd_per_mtok and model.output_usd_per_mtok are set together")
        for key in ("timeout_s", "backoff_base_s", "backoff_max_s"):
            if float(getattr(mc, key)) <= 0:
                raise UserError(f"model.{key} must be more than 0")
        if int(mc.max_retries) < 0:
            raise UserError("model.max_retries must be 0 or more")
        return mc

    @property
    def route(self) -> str:
        """The model string litellm is given."""
        if self.provider in OPENAI_COMPATIBLE:
            return f"openai/{self.name}"
        return f"{self.provider}/{self.name}"

    def sampling(self) -> dict[str, Any]:
        """What shapes the answer (the cache key holds it); never a key, a URL or a timeout."""
        out: dict[str, Any] = {k: getattr(self, k) for k in ("temperature", "max_tokens", "top_p", "seed")
                               if getattr(self, k) is not None}
        out.update(self.params)
        return out


def _norm_model(s: str) -> str:
    s = s.strip().lower()
    return s.rsplit("/", 1)[-1]


def same_model(asked: str, answered: str) -> bool:
    """True if ``answered`` names ``asked`` or a dated/versioned snapshot of it (gpt-4o ->
    gpt-4o-2024-08-06, o3-mini -> o3-mini-2025-01-31), never a sibling (gpt-4o -> gpt-4o-mini)."""
    a, b = _norm_model(asked), _norm_model(answered)
    if a == b:
        return True
    suffix = r"(-\d{4}-?\d{2}-?\d{2}|-\d{3,}|@\d+|-v\d+(:\d+)?|-latest|-preview(-\d{2}-\d{2})?|-\d{2}-\d{4})"
    return re.fullmatch(re.escape(a) + suffix + r"*", b) is not None


def _status(e: BaseException) -> int | None:
    code = getattr(e, "status_code", None)
    try:
        return int(code) if code is not None else None
    except (TypeError, ValueError):
        return None


def _retry_after(e: BaseException) -> float | None:
    for obj in (getattr(e, "response", None), e):
        headers = getattr(obj, "headers", None) or getattr(obj, "litellm_response_headers", None)
        if headers is None:
            continue
        try:
            value = headers.get("retry-after") or headers.get("Retry-After")
        except Exception:
            continue
        if value is None:
            continue
        try:
            return max(0.0, float(value))
        except (TypeError, ValueError):
            return None
    return None


def classify(e: BaseException) -> str:
    """``retry`` or ``fatal`` for an exception of a litellm call. litellm maps some 5xx answers to
    ``BadRequestError``, so the status code decides before the class."""
    litellm = import_litellm()
    code = _status(e)
    if isinstance(e, litellm.Timeout) or isinstance(e, TimeoutError):
        return "retry"
    if code is not None:
        return "retry" if code in RETRY_STATUS or code >= 500 else "fatal"
    if isinstance(e, (litellm.RateLimitError, litellm.InternalServerError, litellm.ServiceUnavailableError,
                      litellm.APIConnectionError, ConnectionError)):
        return "retry"
    if isinstance(e, litellm.APIError):
        return "retry"
    return "fatal"


class LiteLLMModel:
    """A provider model through litellm. Build it with :meth:`from_config` (reads keys, checks prices)."""

    def __init__(self, cfg: ModelConfig, secrets: dict[str, Secret] | None = None, *, label: str | None = None,
                 sleep: Any = time.sleep, rng: random.Random | None = None):
        self.cfg = cfg
        self.name = cfg.name
        self.label = label or cfg.name  # the config's name, for messages
        self._secrets: dict[str, Secret] = dict(secrets or {})
        self._sleep = sleep
        self._rng = rng or random.Random()
        self.check_model = cfg.check_model or ("name" if cfg.provider in CHECKED_PROVIDERS else "off")
        self.litellm = import_litellm()

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_config(cls, cfg: ModelConfig, *, label: str | None = None, **kw: Any) -> LiteLLMModel:
        what = f"model={label or cfg.name}"
        secrets: dict[str, Secret] = {}
        if cfg.api_key_env:
            secrets["api_key"] = require(cfg.api_key_env, what)
        elif cfg.provider in KEYED_PROVIDERS:
            raise UserError(f"{what}: model.api_key_env must name the variable that holds the "
                            f"{cfg.provider} key")
        for kwarg, var in cfg.credentials.items():
            secrets[kwarg] = require(var, what)
        for kwarg, var in cfg.optional_credentials.items():
            s = lookup(var)
            if s is not None:
                secrets[kwarg] = s
        model = cls(cfg, secrets, label=label, **kw)
        model.check_prices()
        return model

    def identity(self) -> dict[str, Any]:
        """What the response cache keys on besides the messages (no URL: local ports change)."""
        return {"provider": self.cfg.provider, "name": self.cfg.name, "sampling": self.cfg.sampling()}

    def check_prices(self) -> None:
        if self.cfg.input_usd_per_mtok is not None:
            return
        target = self.cfg.price_as or self.cfg.route
        try:
            info = self.litellm.get_model_info(target)
            if info.get("input_cost_per_token") is None or info.get("output_cost_per_token") is None:
                raise ValueError("no per-token prices")
        except Exception:
            raise UserError(f"model={self.label}: litellm's bundled price list has no prices for {target!r}; set "
                            "model.input_usd_per_mtok and model.output_usd_per_mtok (USD per million tokens; "
                            "0 for a free local model), or model.price_as=<a litellm model name>") from None

    # ------------------------------------------------------------------ one call
    def _kwargs(self, messages: list[Message]) -> dict[str, Any]:
        c = self.cfg
        kw: dict[str, Any] = {"model": c.route, "messages": copy.deepcopy(messages), "timeout": float(c.timeout_s),
                              "num_retries": 0, "max_retries": 0}
        kw.update(c.sampling())
        if c.base_url:
            kw["api_base"] = c.base_url
        if c.api_version:
            kw["api_version"] = c.api_version
        for kwarg, s in self._secrets.items():
            kw[kwarg] = s.reveal()
        if c.provider in OPENAI_COMPATIBLE and "api_key" not in kw:
            kw["api_key"] = NO_KEY
        if c.stream:
            kw["stream"] = True
            kw["stream_options"] = {"include_usage": True}
        return kw

    def _request(self, messages: list[Message]) -> tuple[Any, str | None]:
        """One attempt: (response, provider's model name)."""
        kw = self._kwargs(messages)
        if not self.cfg.stream:
            resp = self.litellm.completion(**kw)
            return resp, getattr(resp, "model", None)
        deadline = time.monotonic() + float(self.cfg.timeout_s)
        stream = self.litellm.completion(**kw)
        chunks = []
        for chunk in stream:
            chunks.append(chunk)
            if time.monotonic() > deadline:
                close = getattr(getattr(stream, "completion_stream", None), "close", None)
                if callable(close):
                    close()
                raise TimeoutError(f"streamed answer not finished after {self.cfg.timeout_s:g} s")
        resp = self.litellm.stream_chunk_builder(chunks, messages=kw["messages"])
        if resp is None:
            raise TimeoutError("the stream ended without a single chunk")
        # litellm writes the requested name into stream chunks; the provider's own is kept apart.
        return resp, getattr(stream, "_provider_response_model", None)

    def _backoff(self, attempt: int, e: BaseException) -> float:
        c = self.cfg
        delay = min(float(c.backoff_max_s), float(c.backoff_base_s) * (2 ** attempt))
        delay *= self._rng.uniform(0.5, 1.0)  # jitter: retries of parallel runs spread out
        ra = _retry_after(e)
        if ra is not None:
            delay = max(delay, min(ra, float(c.backoff_max_s)))
        return delay

    def _describe(self, e: BaseException) -> str:
        code = _status(e)
        msg = redact(str(e), tuple(self._secrets.values()))
        msg = re.sub(r"\s+", " ", msg).strip()[:1500]
        return f"{type(e).__name__}{f' {code}' if code else ''}: {msg}"

    def complete(self, messages: list[Message]) -> Completion:
        t0 = time.monotonic()
        attempts = int(self.cfg.max_retries) + 1
        failures: list[str] = []
        fatal: str | None = None
        resp = provider_model = None
        for attempt in range(attempts):
            try:
                resp, provider_model = self._request(messages)
                break
            except Exception as e:  # classified below; re-raised without the original (it may hold a key)
                desc = self._describe(e)
                if classify(e) == "fatal":
                    fatal = desc
                    break
                failures.append(desc)
                if attempt + 1 < attempts:
                    delay = self._backoff(attempt, e)
                    log.warning("model %s: %s; retry %d/%d in %.1f s", self.label, desc, attempt + 1,
                                attempts - 1, delay)
                    self._sleep(delay)
        if fatal is not None:
            raise FatalModelError(f"{self.cfg.route}: {fatal}")
        if resp is None:
            raise TransientModelError(f"{self.cfg.route}: gave up after {attempts} attempt(s); last error: "
                                      f"{failures[-1] if failures else '?'}")
        latency = time.monotonic() - t0
        return self._completion(resp, provider_model, messages, latency, retries=len(failures))

    # ------------------------------------------------------------------ the answer
    def _completion(self, resp: Any, provider_model: str | None, messages: list[Message], latency: float,
                    retries: int) -> Completion:
        if provider_model and self.check_model == "name" and not same_model(self.cfg.name, provider_model):
            raise ModelMismatchError(f"{self.cfg.route}: asked for {self.cfg.name!r} but the provider answered "
                                     f"with {provider_model!r}; refusing a substituted model "
                                     "(set model.check_model=off to accept it)")
        choices = getattr(resp, "choices", None) or []
        if not choices:
            raise TransientModelError(f"{self.cfg.route}: the answer holds no choices")
        msg = choices[0].message
        text = getattr(msg, "content", None) or ""
        reasoning = getattr(msg, "reasoning_content", None) or None
        if reasoning is None:
            blocks = getattr(msg, "thinking_blocks", None) or []
            parts = [b.get("thinking", "") for b in blocks if isinstance(b, dict) and b.get("thinking")]
            reasoning = "\n\n".join(parts) or None
        usage = getattr(resp, "usage", None)
        tin = int(getattr(usage, "prompt_tokens", 0) or 0)
        tout = int(getattr(usage, "completion_tokens", 0) or 0)
        meta: dict[str, Any] = {"provider": self.cfg.provider, "provider_model": provider_model,
                                "finish_reason": getattr(choices[0], "finish_reason", None), "retries": retries}
        if tin == 0 and tout == 0:  # the server sent no usage: estimate (4 characters a token)
            tin = sum(len(str(m.get("content", ""))) for m in messages) // 4
            tout = (len(text) + len(reasoning or "")) // 4
            meta["usage_estimated"] = True
        details = getattr(usage, "completion_tokens_details", None)
        rtok = getattr(details, "reasoning_tokens", None) if details is not None else None
        if rtok:
            meta["reasoning_tokens"] = int(rtok)
        usd, source = self._cost(resp, tin, tout)
        meta["usd_source"] = source
        return Completion(text=text, usage=Usage(tokens_in=tin, tokens_out=tout, latency_s=round(latency, 4), usd=usd),
                          reasoning=reasoning, meta=meta)

    def _cost(self, resp: Any, tin: int, tout: int) -> tuple[float, str]:
        c = self.cfg
        if c.input_usd_per_mtok is not None and c.output_usd_per_mtok is not None:
            return (tin * float(c.input_usd_per_mtok) + tout * float(c.output_usd_per_mtok)) / 1e6, "config"
        try:
            if getattr(resp, "usage", None) is not None and (resp.usage.prompt_tokens or resp.usage.completion_tokens):
                usd = self.litellm.completion_cost(completion_response=resp, model=c.price_as or c.route)
            else:
                pin, pout = self.litellm.cost_per_token(model=c.price_as or c.route, prompt_tokens=tin,
                                                         completion_tokens=tout)
                usd = pin + pout
            return float(usd), "litellm"
        except Exception as e:  # litellm raises for models it cannot price; checked at build, so rare
            log.warning("model %s: no price (%s); counting 0 USD", self.label, type(e).__name__)
            return 0.0, "unknown"
