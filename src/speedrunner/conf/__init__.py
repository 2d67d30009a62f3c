"""The Hydra config tree shipped with the package."""
