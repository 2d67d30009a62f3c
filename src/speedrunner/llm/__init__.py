"""Model backends. ``build_model(cfg, ...)`` turns a ``model/`` config into a :class:`Model`."""
