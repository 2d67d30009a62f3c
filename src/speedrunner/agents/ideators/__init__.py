"""Ideators, found by name; add one with a class and ``ideator/<name>.yaml`` (``cls: pkg.mod:Class``)."""

from speedrunner.agents.ideators.base import Idea, IdeaContext, Ideator
from speedrunner.agents.ideators.hints import HintsIdeator
from speedrunner.agents.ideators.llm import LLMIdeator

IDEATORS: dict[str, type[Ideator]] = {c.name: c for c in (HintsIdeator, LLMIdeator)}

__all__ = ["IDEATORS", "Idea", "IdeaContext", "Ideator", "HintsIdeator", "LLMIdeator"]
