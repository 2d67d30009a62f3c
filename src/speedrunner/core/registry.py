"""Look up a class by registry name, or by ``module:Class`` from a config's ``cls`` key."""

from __future__ import annotations

import importlib
from typing import Any

from speedrunner.core.errors import UserError


def import_object(path: str, field: str) -> Any:
    """``package.module:name`` -> the object; a UserError naming ``field`` when it cannot be imported."""
    mod_name, _, attr = str(path).partition(":")
    try:
        return getattr(importlib.import_module(mod_name), attr)
    except (ImportError, AttributeError, ValueError) as e:
        raise UserError(f"{field}: cannot import {path!r} ({e}); expected 'package.module:name'") from None


def resolve(kind: str, cfg: Any, builtin: dict[str, Any]) -> Any:
    cls_path = cfg.get("cls") if hasattr(cfg, "get") else None
    name = cfg.get("name") if hasattr(cfg, "get") else cfg
    if cls_path:
        return import_object(cls_path, f"{kind}.cls")
    if name not in builtin:
        raise UserError(f"{kind}.name: unknown {kind} {name!r}; built in: {', '.join(sorted(builtin))}, "
                        f"or set {kind}.cls=package.module:ClassName")
    return builtin[name]
