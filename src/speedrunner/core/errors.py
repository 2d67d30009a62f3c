"""Errors meant for people (config, task files, command line) rather than for the model."""

from __future__ import annotations


class UserError(Exception):
    """A mistake in the user's input. The CLI prints the message, without a traceback, and exits 2.

    Messages name the file, the field and the fix: ``task.yaml: field 'metric.direction' must be
    'minimize' or 'maximize', got 'down'``.
    """


class TaskError(UserError):
    """A task folder or task.yaml that cannot be used."""


class ConfigMismatch(UserError):
    """A resumed run whose configuration does not hash to the one it started with."""
