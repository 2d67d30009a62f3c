"""Build a :class:`~speedrunner.core.types.Model` from a ``model/`` config.

This is the one place that knows every backend. Offline backends (``null``, ``oracle``, ``scripted``)
need no key; a config with ``cls: package.module:Class`` builds the user's own class with the config's
other keys as keyword arguments; a config with a ``provider`` key is a provider model through litellm
(``LiteLLMModel``), or a llama.cpp server speedrunner starts itself (``provider: local``).

Provider models can be wrapped, in this order, by a :class:`~speedrunner.llm.cache.CachingModel`
(``cache=``) and a :class:`~speedrunner.llm.ledger.GuardedModel` (``ledger=``). ``replay=True`` builds
a model that answers only from the cache, needs no key and starts no server.
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf

from speedrunner.core.errors import UserError
from speedrunner.core.registry import resolve
from speedrunner.core.types import Model
from speedrunner.llm.cache import CachingModel, ReplayOnly, ResponseCache
from speedrunner.llm.ledger import GuardedModel, Ledger
from speedrunner.llm.offline import NullModel, ScriptedModel
from speedrunner.llm.oracle import OracleModel
from speedrunner.tasks.spec import Task

ROLES = ("ideator", "coder", "analyst")


def _plain(mcfg: DictConfig | dict[str, Any]) -> dict[str, Any]:
    return OmegaConf.to_container(mcfg, resolve=True) if isinstance(mcfg, DictConfig) else dict(mcfg)


def is_provider_model(mcfg: DictConfig | dict[str, Any]) -> bool:
    """True for configs that call a provider or a local server (they can be cached and replayed)."""
    cfg = _plain(mcfg)
    return bool(cfg.get("provider")) and not cfg.get("cls")


def build_model(mcfg: DictConfig | dict[str, Any], task: Task, coder_cls: type, *,
                cache: ResponseCache | None = None, replay: bool = False, ledger: Ledger | None = None) -> Model:
    """``cache``: answer from / store into this response cache (provider models only). ``replay``: strict
    cache-only mode (needs ``cache``; no network, no key, no server). ``ledger``: refuse calls once a
    budget cap is reached."""
    cfg = _plain(mcfg)
    name = str(cfg.get("name"))
    if cfg.get("cls"):
        cls = resolve("model", cfg, {})
        return cls(**{k: v for k, v in cfg.items() if k != "cls"})
    if cfg.get("provider"):
        model = _build_provider(cfg, cache=cache, replay=replay)
        return GuardedModel(model, ledger) if ledger is not None else model
    if name == "null":
        return NullModel()
    if name == "oracle":
        return OracleModel(task, coder_cls)
    if name == "scripted":
        return ScriptedModel(cfg["path"], on_exhausted=cfg.get("on_exhausted", "repeat_last"))
    raise UserError(f"model.name: unknown model {name!r}; offline models are null, oracle and scripted; "
                    "a provider model needs model.provider (see docs/MODELS.md)")


def _build_provider(cfg: dict[str, Any], *, cache: ResponseCache | None, replay: bool) -> Model:
    from speedrunner.llm.local import build_local
    from speedrunner.llm.provider import LiteLLMModel, ModelConfig

    label = str(cfg.get("name"))
    local = cfg.get("provider") == "local"
    if replay:
        if cache is None:
            raise UserError("replay needs the run's response cache")
        mc = build_local(cfg, label, start=False) if local else ModelConfig.from_dict(cfg)
        ident = {"provider": mc.provider, "name": mc.name, "sampling": mc.sampling()}
        return CachingModel(ReplayOnly(mc.name, ident), cache, strict=True)
    if local:
        model: Model = build_local(cfg, label)
    else:
        model = LiteLLMModel.from_config(ModelConfig.from_dict(cfg), label=label)
    return CachingModel(model, cache) if cache is not None else model


def build_role_models(cfg: DictConfig | dict[str, Any], task: Task, coder_cls: type, *,
                      roles: tuple[str, ...] = ROLES, **kw: Any) -> dict[str, Model]:
    """One model per role: ``cfg.models.<role>`` when set (a model config, e.g. from
    ``+model@models.coder=gpt_4o``), else ``cfg.model``. Roles with equal configs share one instance
    (one set of cache counters, one server)."""
    root = _plain(cfg)
    per_role = root.get("models") or {}
    built: list[tuple[dict[str, Any], Model]] = []
    out: dict[str, Model] = {}
    # A coder that runs its own agent (coder=aider) plays the coder role's model itself, built from that
    # role's model config; it returns None for the configs it leaves alone (offline models).
    own_model = getattr(coder_cls, "coder_model", None)
    for role in roles:
        mcfg = per_role.get(role) or root["model"]
        mcfg = _plain(mcfg) if not isinstance(mcfg, dict) else mcfg
        if role == "coder" and callable(own_model):
            mine = own_model(mcfg, task, dict(root.get("coder") or {}), **kw)
            if mine is not None:
                out[role] = mine
                continue
        same = next((m for c, m in built if c == mcfg), None)
        if same is None:
            same = build_model(mcfg, task, coder_cls, **kw)
            built.append((mcfg, same))
        out[role] = same
    return out


def close_models(models: dict[str, Model] | list[Model]) -> None:
    """Stop what the models started (local servers), wrappers included. Safe to call twice."""
    seen: list[Any] = []
    for m in (models.values() if isinstance(models, dict) else models):
        while m is not None and all(m is not s for s in seen):
            seen.append(m)
            close = getattr(m, "close", None)
            if callable(close):
                close()
            m = getattr(m, "inner", None)
