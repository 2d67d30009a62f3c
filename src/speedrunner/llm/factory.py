"""Build a :class:`~speedrunner.core.types.Model` from a ``model/`` config.

This is the one place that knows every backend. Offline backends (``null``, ``oracle``, ``scripted``)
need no key; a config with ``cls: package.module:Class`` builds the user's own class with the config's
other keys as keyword arguments.
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf

from speedrunner.core.errors import UserError
from speedrunner.core.registry import resolve
from speedrunner.core.types import Model
from speedrunner.llm.offline import NullModel, ScriptedModel
from speedrunner.llm.oracle import OracleModel
from speedrunner.tasks.spec import Task


def _plain(mcfg: DictConfig | dict[str, Any]) -> dict[str, Any]:
    return OmegaConf.to_container(mcfg, resolve=True) if isinstance(mcfg, DictConfig) else dict(mcfg)


def build_model(mcfg: DictConfig | dict[str, Any], task: Task, coder_cls: type) -> Model:
    cfg = _plain(mcfg)
    name = str(cfg.get("name"))
    if cfg.get("cls"):
        cls = resolve("model", cfg, {})
        return cls(**{k: v for k, v in cfg.items() if k != "cls"})
    if name == "null":
        return NullModel()
    if name == "oracle":
        return OracleModel(task, coder_cls)
    if name == "scripted":
        return ScriptedModel(cfg["path"], on_exhausted=cfg.get("on_exhausted", "repeat_last"))
    raise UserError(f"model.name: unknown model {name!r}; offline models are null, oracle and scripted")
