"""The metric contract: deterministic parsing of a run's log and validity conditions.

No model ever reads a metric. A task declares regular expressions with named groups; the *last* (or
first) match of each pattern in the log gives the metric values. Validity conditions are tiny
comparisons such as ``exit_code == 0`` or ``val_loss <= 3.28``, parsed here without ``eval``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

_NUM = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_COND = re.compile(rf"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(==|!=|<=|>=|<|>)\s*({_NUM}|[A-Za-z_][A-Za-z0-9_]*)\s*$")
_OPS = {
    "==": lambda a, b: a == b,
    "!=": lambda a, b: a != b,
    "<=": lambda a, b: a <= b,
    ">=": lambda a, b: a >= b,
    "<": lambda a, b: a < b,
    ">": lambda a, b: a > b,
}


@dataclass(frozen=True)
class Condition:
    """``<metric> <op> <number>`` or ``<metric> <op> <metric>`` (e.g. ``train_time <= wall_ms``)."""

    name: str
    op: str
    value: float | None = None
    other: str | None = None  # a metric name on the right-hand side

    @classmethod
    def parse(cls, text: str) -> Condition:
        m = _COND.match(text)
        if not m:
            raise ValueError(
                f"cannot parse condition {text!r}; expected '<metric> <op> <number or metric>' with op one of "
                "==, !=, <=, >=, <, > (for example 'val_loss <= 3.28' or 'train_time <= wall_ms')"
            )
        rhs = m.group(3)
        if re.fullmatch(_NUM, rhs):
            return cls(m.group(1), m.group(2), float(rhs))
        return cls(m.group(1), m.group(2), None, rhs)

    @property
    def names(self) -> list[str]:
        return [self.name] + ([self.other] if self.other else [])

    def check(self, values: dict[str, float]) -> str | None:
        """None when the condition holds, else a short human-readable reason."""
        for name in self.names:
            if name not in values:
                return f"{name} not found in the log"
            v = values[name]
            if v is None or (isinstance(v, float) and math.isnan(v)):
                return f"{name} is NaN"
        v = values[self.name]
        rhs = values[self.other] if self.other else self.value
        if _OPS[self.op](v, rhs):
            return None
        rhs_s = f"{self.other} = {_fmt(rhs)}" if self.other else _fmt(rhs)
        return f"{self.name} = {_fmt(v)} fails {self.name} {self.op} {rhs_s}"

    def __str__(self) -> str:
        return f"{self.name} {self.op} {self.other or _fmt(self.value)}"


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:.6g}"


@dataclass(frozen=True)
class Parser:
    pattern: re.Pattern[str]
    match: str = "last"  # "last" or "first"
    source: str = "stdout"  # "stdout" or "stderr"

    def parse(self, text: str) -> dict[str, float]:
        found = None
        for m in self.pattern.finditer(text):
            found = m
            if self.match == "first":
                break
        if found is None:
            return {}
        out: dict[str, float] = {}
        for key, raw in found.groupdict().items():
            if raw is None:
                continue
            try:
                out[key] = float(raw)
            except ValueError:
                out[key] = float("nan")
        return out


def compile_pattern(pattern: str) -> re.Pattern[str]:
    rx = re.compile(pattern, re.MULTILINE)
    if not rx.groupindex:
        raise ValueError(f"pattern {pattern!r} has no named group; name each value, e.g. (?P<val_loss>[0-9.]+)")
    return rx


def parse_metrics(parsers: list[Parser], logs: dict[str, str]) -> dict[str, float]:
    """Apply every parser to its log; later parsers win on a repeated name."""
    values: dict[str, float] = {}
    for p in parsers:
        values.update(p.parse(logs.get(p.source, "")))
    return values
