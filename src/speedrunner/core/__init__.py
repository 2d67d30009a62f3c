"""The few dataclasses and protocols every layer shares."""
