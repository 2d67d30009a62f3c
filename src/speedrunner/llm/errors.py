"""Errors a model call can raise. ``Agent.act`` turns any of them into a failed attempt; the run goes on.

``FatalModelError`` (bad key, bad request, a provider that answers with another model) fails at once:
retrying cannot help. ``TransientModelError`` is raised once the retries for a rate limit, a server
error, a timeout or a dropped connection are used up. Messages never contain a key: every provider
message is passed through :func:`speedrunner.llm.secrets.redact` first, and no provider exception is
chained to them.
"""

from __future__ import annotations


class ModelCallError(RuntimeError):
    """A model call that gave no completion."""


class FatalModelError(ModelCallError):
    """Authentication, permission, bad request, unknown model: retrying cannot help."""


class ModelMismatchError(FatalModelError):
    """The provider answered with a model other than the configured one (never accepted silently)."""


class TransientModelError(ModelCallError):
    """Rate limits, 5xx, timeouts or dropped connections that outlasted every retry."""


class CacheMiss(ModelCallError):
    """Strict (replay) mode: the response cache holds no answer for this request."""


class BudgetExceeded(ModelCallError):
    """A budget cap was reached before this call was made."""
