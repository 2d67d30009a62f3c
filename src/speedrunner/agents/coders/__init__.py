"""Coders, one class per edit format, found by name. A user adds one with a class and a config file:
``coder/mine.yaml`` with ``name: mine`` and ``cls: my_package.my_module:MyCoder``."""

from __future__ import annotations

from speedrunner.agents.coders.base import Coder, EditError, EditResult
from speedrunner.agents.coders.editblock import EditBlockCoder
from speedrunner.agents.coders.wholefile import WholeFileCoder

CODERS: dict[str, type[Coder]] = {c.name: c for c in (EditBlockCoder, WholeFileCoder)}

__all__ = ["CODERS", "Coder", "EditBlockCoder", "EditError", "EditResult", "WholeFileCoder"]
