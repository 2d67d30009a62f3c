"""Model backends. ``build_model(cfg, ...)`` turns a ``model/`` config into a :class:`Model`.

- ``offline.py``, ``oracle.py``: models that need no key (null, scripted, oracle).
- ``provider.py``: ``LiteLLMModel``, every provider through litellm (pinned); ``ModelConfig``.
- ``secrets.py``: keys from the environment or ``secrets.yaml``; ``redact``.
- ``errors.py``: ``FatalModelError``, ``TransientModelError``, ``ModelMismatchError``, ``CacheMiss``, ...
- ``cache.py``: ``ResponseCache`` (SQLite) and ``CachingModel`` (occurrence-indexed, resume, strict replay).
- ``ledger.py``: ``Ledger`` (spend and budget caps) and ``GuardedModel``.
- ``local.py``: ``LocalServer`` and ``model=local`` (llama.cpp's OpenAI-compatible server on 127.0.0.1).
- ``factory.py``: ``build_model``, ``build_role_models``, ``close_models``.

See docs/MODELS.md.
"""
