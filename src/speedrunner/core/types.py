"""Plain data objects passed along the chain task -> search -> agents -> executor -> scorer."""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, runtime_checkable

Message = dict[str, str]  # {"role": "system" | "user" | "assistant", "content": "..."}


@dataclass
class Usage:
    tokens_in: int = 0
    tokens_out: int = 0
    latency_s: float = 0.0
    usd: float = 0.0

    def __iadd__(self, other: Usage) -> Usage:
        self.tokens_in += other.tokens_in
        self.tokens_out += other.tokens_out
        self.latency_s += other.latency_s
        self.usd += other.usd
        return self


@dataclass
class Completion:
    """What a model returns: the text to parse, its usage, and any reasoning trace kept apart."""

    text: str
    usage: Usage = field(default_factory=Usage)
    reasoning: str | None = None
    # Facts for the journal, e.g. {"cache_key": "...", "cached": True, "provider_model": "..."}.
    meta: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class Model(Protocol):
    """A chat model. ``complete`` must be safe to call with the full message list every time.

    A model with state across calls (a script position, a cache's occurrence counters) may also define
    ``resume(calls: list[dict])``: on resume it receives the journal records of the calls that the kept
    nodes made with it, in order, and must put itself where it was after them."""

    name: str

    def complete(self, messages: list[Message]) -> Completion: ...


class Operator(str, enum.Enum):
    ROOT = "root"
    DRAFT = "draft"
    IMPROVE = "improve"
    DEBUG = "debug"


class Status(str, enum.Enum):
    """Outcome of a node.

    ``valid``: ran and met every validity condition. ``invalid``: ran to the end but failed a validity
    condition (for example the loss target). ``buggy``: crashed, timed out, printed no metric, or the
    coder could not produce a change; these are what the debug operator picks up.
    """

    VALID = "valid"
    INVALID = "invalid"
    BUGGY = "buggy"


@dataclass
class ExecResult:
    exit_code: int | None
    wall_s: float
    timed_out: bool = False
    killed_reason: str | None = None
    stdout_path: str = "stdout.log"
    stderr_path: str = "stderr.log"
    cpu_s: float | None = None  # user + system CPU time of the process (and the children it waited for)
    max_rss_mb: float | None = None
    violation: str | None = None  # a sandbox rule the run broke without being killed (e.g. too many threads)


@dataclass
class Outcome:
    """The scorer's verdict on one node. Written to ``nodes/v_N/result.json``."""

    status: Status
    metrics: dict[str, float] = field(default_factory=dict)
    metric: float | None = None  # the task's primary metric, when parsed
    valid: bool = False
    reason: str = ""
    exit_code: int | None = None
    wall_s: float | None = None
    timings: dict[str, float] = field(default_factory=dict)
    # Worth a human's look, but not invalidating (e.g. "reads the held-out test split").
    flags: list[str] = field(default_factory=list)
    analysis: str = ""  # the analyst model's reading of the result, when the analyst step is on
    # The node's code was byte-identical to this earlier node's, so it was not run again: its result is reused.
    duplicate_of: int | None = None

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["status"] = self.status.value
        # NaN/inf are not JSON: write them as null
        d["metrics"] = {k: (v if v == v and v not in (float("inf"), float("-inf")) else None)
                        for k, v in d["metrics"].items()}
        if d["metric"] is not None and (d["metric"] != d["metric"] or abs(d["metric"]) == float("inf")):
            d["metric"] = None
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Outcome:
        d = dict(d)
        d["status"] = Status(d["status"])
        return cls(**d)
