"""speedrunner: a benchmark and framework for LLM research agents on the NanoGPT speedrun."""

__version__ = "0.1.0"
