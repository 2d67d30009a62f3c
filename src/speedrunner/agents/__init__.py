"""Agents: ``Agent.act`` (call a model, validate, retry with feedback), ideators and coders."""
