"""Prompt text shared by ideators and coders: the system prompt, the node's situation, the history."""

from __future__ import annotations

from speedrunner.core.types import Operator, Status
from speedrunner.tasks.spec import Task
from speedrunner.workspace.store import Node

SYSTEM = """\
You are a careful research engineer working on a benchmark task. You change code to make one measured
metric better while keeping the result valid. Every change you make is run and measured by the harness;
the harness alone reads the metric from the log.

# Task
{description}

# Rules
{rules}

The metric is `{metric}` ({direction}). A result counts only if: {validity}.
"""

JOBS = {
    Operator.DRAFT: "Propose one change to the starting code below that should improve `{metric}`, and implement it.",
    Operator.IMPROVE: ("Improve the solution below ({node}, {metric} = {value}, the best so far) with one further "
                       "change that should improve `{metric}`, and implement it."),
    Operator.DEBUG: ("The code below ({node}) failed: {reason}\n\nFind the cause and fix it with the smallest "
                     "change that keeps its idea."),
}


ANALYST = """\
# Your job
Read the result of one experiment and say, in two to four sentences, what it tells us about the idea
and what the next attempt should try. Do not write code.

# The experiment ({node}, {origin})
Idea: {idea}

Change against its parent:
```diff
{diff}
```

# Result
{result}

Last lines of its log:
```
{log}
```
"""


def analyst_prompt(node: Node, task: Task, diff: str, log_tail: str) -> str:
    origin = "baseline" if node.parent is None else f"{node.operator.value} of v_{node.parent}"
    diff = diff if len(diff) <= 6000 else diff[:6000] + "\n... (cut)"
    return ANALYST.format(node=node.name, origin=origin, idea=node.summary or node.hypothesis or "(not stated)",
                          diff=diff.strip() or "(no change)", result=describe(node, task)[2:], log=log_tail or "(empty)")


def system_prompt(task: Task) -> str:
    validity = ", ".join(str(c) for c in task.conditions) or "the command exits with status 0"
    return SYSTEM.format(description=task.description, rules=task.rules or "(none beyond the task)",
                         metric=task.metric.name, direction=task.metric.direction, validity=validity).strip() + "\n"


def fmt_value(x: float | None) -> str:
    if x is None:
        return "n/a"
    return f"{x:.6g}"


def job_text(task: Task, op: Operator, parent: Node) -> str:
    o = parent.outcome
    return JOBS[op].format(metric=task.metric.name, node=parent.name, value=fmt_value(o.metric if o else None),
                           reason=(o.reason if o else "unknown").strip())


def describe(node: Node, task: Task) -> str:
    o = node.outcome
    origin = "baseline" if node.parent is None else f"{node.operator.value} of v_{node.parent}"
    if o is None:
        state = "not run"
    elif o.status is Status.VALID:
        state = f"valid, {task.metric.name} = {fmt_value(o.metric)}"
    else:
        first = o.reason.strip().splitlines()[0] if o.reason.strip() else o.status.value
        state = f"{o.status.value}: {first}"
        if o.metric is not None:
            state += f" ({task.metric.name} = {fmt_value(o.metric)})"
    if o is not None and o.duplicate_of is not None:
        state += f" (the same code as v_{o.duplicate_of}: not run again)"
    idea = f" Idea: {node.summary}" if node.summary else ""
    analysis = f" Analysis: {o.analysis.strip()[:300]}" if o is not None and o.analysis.strip() else ""
    return f"- {node.name} ({origin}): {state}.{idea}{analysis}"


def history(nodes: list[Node], task: Task, limit: int = 6) -> str:
    """A deterministic summary of the most recent finished attempts (newest last)."""
    done = [n for n in sorted(nodes, key=lambda n: n.id) if n.outcome is not None][-limit:]
    return "\n".join(describe(n, task) for n in done)
