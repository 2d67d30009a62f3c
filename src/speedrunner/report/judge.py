"""The similarity judge (optional): an LLM decides which of the reference record's key changes a node's
diff reproduced, as the paper's judge did. Results go to RUN_DIR/judge.json, which ``report`` reads.

A node's score is the mean credit over the key changes: 1 for "yes" (the same mechanism, even with other
constants), 0.5 for "partial", 0 for "no". The key changes are given (a list of one-line descriptions)
or, when not given, listed by the judge itself from the reference text; pass them explicitly when
comparing runs, so that every node is judged against the same list.

    from speedrunner.report.judge import judge_run, reference_for_task
    ref = reference_for_task("nanogpt_mini/record_3")
    judge_run(run_dir, model, ref, nodes="best")      # -> RUN_DIR/judge.json
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from speedrunner.core.errors import UserError
from speedrunner.core.types import Message, Model
from speedrunner.workspace.fsutil import atomic_write_json

CREDIT = {"yes": 1.0, "partial": 0.5, "no": 0.0}
MAX_DIFF_CHARS = 60_000
MAX_REFERENCE_CHARS = 60_000

JUDGE_SYSTEM = """\
You are a careful reviewer of machine-learning code changes. You compare a change an automated agent made \
to a training script with the change a human expert made to the same script (the reference record). \
You judge mechanisms, not wording or exact constants. You answer with one JSON object and nothing else."""

JUDGE_PROMPT = """\
# Reference record: what the expert changed
{reference}

# Key changes of the reference
{key_changes}

# The agent's change (unified diff against its starting code)
{hypothesis}```diff
{diff}
```

# Your task
For each key change of the reference, decide whether the agent's diff implements it:
- "yes": the diff implements the same mechanism (other constants or another coding style are fine);
- "partial": it implements part of it, or a clearly weaker variant;
- "no": it does not implement it (also when the diff is empty or unrelated).
Judge only what the diff does, not what its comments or the agent's idea claim.

Answer with exactly one JSON object, no other text:
{{"changes": [{{"change": "<the key change, as listed>", "verdict": "yes" | "partial" | "no", \
"evidence": "<the diff lines or a short reason, at most 200 characters>"}}, ...]}}
{count_rule}"""

LIST_YOURSELF = ("(not given: first list the reference's key changes yourself, 2 to 8 of them, one line each, "
                 "the ones that matter for speed; then judge each)")


@dataclass
class JudgeResult:
    score: float | None
    changes: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None
    attempts: int = 0
    usage: dict[str, float] = field(default_factory=lambda: {"calls": 0, "tokens_in": 0, "tokens_out": 0, "usd": 0.0})
    reply: str = ""


class JudgeReplyError(ValueError):
    pass


def build_messages(reference: str, diff: str, key_changes: Sequence[str] | None = None,
                   hypothesis: str = "") -> list[Message]:
    if len(diff) > MAX_DIFF_CHARS:
        diff = diff[:MAX_DIFF_CHARS] + "\n[... diff cut ...]"
    if len(reference) > MAX_REFERENCE_CHARS:
        reference = reference[:MAX_REFERENCE_CHARS] + "\n[... cut ...]"
    if key_changes:
        kc = "\n".join(f"{i + 1}. {c}" for i, c in enumerate(key_changes))
        rule = (f"List exactly these {len(key_changes)} changes, in this order, with their text as given.")
    else:
        kc, rule = LIST_YOURSELF, ""
    hyp = f"The agent's stated idea (do not trust it; judge the diff): {hypothesis.strip()}\n\n" if hypothesis.strip() else ""
    prompt = JUDGE_PROMPT.format(reference=reference.strip() or "(none)", key_changes=kc, hypothesis=hyp,
                                 diff=diff.rstrip() or "(empty: the agent changed nothing)", count_rule=rule)
    return [{"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": prompt.rstrip() + "\n"}]


def _json_object(text: str) -> Any:
    """The reply's JSON object: a ```json block, or the outermost {...}."""
    text = re.sub(r"<think>.*?</think>", "", text, flags=re.S)
    m = re.search(r"```(?:json)?\s*(\{.*?\})\s*```", text, flags=re.S)
    candidates = [m.group(1)] if m else []
    start, end = text.find("{"), text.rfind("}")
    if start >= 0 and end > start:
        candidates.append(text[start:end + 1])
    for c in candidates:
        try:
            return json.loads(c)
        except ValueError:
            continue
    raise JudgeReplyError("the reply holds no JSON object; answer with one JSON object only")


def parse_reply(text: str, key_changes: Sequence[str] | None = None) -> list[dict[str, Any]]:
    obj = _json_object(text)
    changes = obj.get("changes") if isinstance(obj, dict) else None
    if not isinstance(changes, list) or not changes:
        raise JudgeReplyError('the JSON object needs a non-empty "changes" list')
    out = []
    for i, c in enumerate(changes):
        if not isinstance(c, dict):
            raise JudgeReplyError(f"changes[{i}] is not an object")
        verdict = str(c.get("verdict", "")).strip().lower()
        if verdict not in CREDIT:
            raise JudgeReplyError(f'changes[{i}]: verdict must be "yes", "partial" or "no", not {verdict!r}')
        out.append({"change": str(c.get("change", "")).strip(), "verdict": verdict, "credit": CREDIT[verdict],
                    "evidence": str(c.get("evidence", ""))[:300]})
    if key_changes:
        if len(out) != len(key_changes):
            raise JudgeReplyError(f"judge all {len(key_changes)} key changes, one entry each, in order "
                                  f"(the reply had {len(out)})")
        for c, name in zip(out, key_changes, strict=True):
            c["change"] = name  # the given wording, so runs can be compared change by change
    return out


def judge_node(model: Model, reference: str, diff: str, *, key_changes: Sequence[str] | None = None,
               hypothesis: str = "", max_retries: int = 1) -> JudgeResult:
    """Ask ``model`` which key changes ``diff`` reproduced. A refused reply is sent back with the reason,
    up to ``max_retries`` times."""
    messages = build_messages(reference, diff, key_changes, hypothesis)
    res = JudgeResult(score=None)
    for attempt in range(1 + max_retries):
        res.attempts = attempt + 1
        try:
            comp = model.complete(messages)
        except Exception as e:  # a failing judge leaves a note, not a crash
            res.error = f"the judge model raised {type(e).__name__}: {e}"
            return res
        res.usage["calls"] += 1
        res.usage["tokens_in"] += comp.usage.tokens_in
        res.usage["tokens_out"] += comp.usage.tokens_out
        res.usage["usd"] += comp.usage.usd
        res.reply = comp.text
        try:
            res.changes = parse_reply(comp.text, key_changes)
        except JudgeReplyError as e:
            res.error = str(e)
            messages = [*messages, {"role": "assistant", "content": comp.text},
                        {"role": "user", "content": f"Your answer could not be used: {e}. Send the whole JSON "
                                                    "object again."}]
            continue
        res.error = None
        res.score = round(sum(c["credit"] for c in res.changes) / len(res.changes), 4)
        return res
    return res


def scored_node(summary: dict[str, Any]) -> int | None:
    """The node the run's score stands on: re-evaluation's chosen node when the run was re-evaluated,
    else the search's best node."""
    reeval = summary.get("reeval")
    if isinstance(reeval, dict) and "chosen_node" in reeval:
        return reeval.get("chosen_node")
    return summary.get("best_node")


def _node_ids(run_dir: Path, nodes: str | Iterable[int]) -> list[int]:
    summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
    if nodes == "best":
        best = scored_node(summary)
        return [best] if best not in (None, 0) else []
    ids = sorted(int(p.name[2:]) for p in (run_dir / "nodes").glob("v_*") if p.name[2:].isdigit())
    if nodes == "all":
        return [i for i in ids if i != 0]
    if nodes == "valid":
        out = []
        for i in ids:
            try:
                r = json.loads((run_dir / "nodes" / f"v_{i}" / "result.json").read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            if i != 0 and r.get("status") == "valid":
                out.append(i)
        return out
    if isinstance(nodes, str):
        raise UserError(f"nodes={nodes!r}: use best, valid, all or a list of node ids")
    return [int(i) for i in nodes]


def judge_run(run_dir: Path, model: Model, reference: str, *, key_changes: Sequence[str] | None = None,
              nodes: str | Iterable[int] = "best", reference_source: str = "") -> Path:
    """Judge the chosen nodes of a run (``best``, ``valid``, ``all`` or ids) and write RUN_DIR/judge.json.

    ``best`` is the node the run's score stands on: re-evaluation's chosen node when the run was
    re-evaluated (summary.json ``reeval.chosen_node``), else ``best_node``.

    Nodes already in an existing judge.json made against the same reference and key changes are kept,
    not asked again. The best node of a run where nothing beat the baseline scores 0 without a call."""
    run_dir = Path(run_dir)
    if not (run_dir / "summary.json").is_file():
        raise UserError(f"{run_dir}: not a run folder (no summary.json)")
    path = run_dir / "judge.json"
    try:
        old = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
    except ValueError:
        old = None
    same = (isinstance(old, dict) and old.get("reference") == reference
            and old.get("key_changes_given") == (list(key_changes) if key_changes else None))
    doc: dict[str, Any] = old if same else {
        "schema": 1, "reference": reference, "reference_source": reference_source,
        "key_changes_given": list(key_changes) if key_changes else None, "nodes": {},
        "usage": {"calls": 0, "tokens_in": 0, "tokens_out": 0, "usd": 0.0}}
    doc["judge_model"] = getattr(model, "name", type(model).__name__)
    summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
    doc["best_node"] = scored_node(summary)
    if nodes == "best" and doc["best_node"] in (None, 0):
        doc["nodes"]["0"] = {"score": 0.0, "changes": [], "error": None,
                             "note": "nothing beat the baseline: no change to judge"}
        doc["best_node"] = 0
    for nid in _node_ids(run_dir, nodes):
        if str(nid) in doc["nodes"] and doc["nodes"][str(nid)].get("error") is None:
            continue
        ndir = run_dir / "nodes" / f"v_{nid}"
        if not ndir.is_dir():
            raise UserError(f"{run_dir}: no node v_{nid}")
        try:
            diff = (ndir / "diff.patch").read_text(encoding="utf-8", errors="replace")
        except OSError:
            diff = ""
        try:
            hyp = json.loads((ndir / "meta.json").read_text(encoding="utf-8")).get("hypothesis") or ""
        except (OSError, ValueError):
            hyp = ""
        r = judge_node(model, reference, diff, key_changes=key_changes, hypothesis=hyp)
        for k, v in r.usage.items():
            doc["usage"][k] = doc["usage"].get(k, 0) + v
        doc["nodes"][str(nid)] = {k: v for k, v in asdict(r).items() if k != "usage"}
    doc["usage"]["usd"] = round(float(doc["usage"]["usd"]), 6)
    atomic_write_json(path, doc)
    return path


def reference_for_task(task_id: str, size: str | None = None, task_paths: Sequence[str | Path] = ()) -> str:
    """The reference text for a ladder task: its level-2 description (when the task has one) and the diff
    from its template to the next record (its ``reference/``)."""
    from speedrunner.tasks.knowledge import reference_diff, select_hints
    from speedrunner.tasks.registry import get_task

    task = get_task(task_id, size=size, extra=task_paths)
    parts = []
    if task.hints_dir is not None and task.hints_dir.is_dir():
        try:
            for h in select_hints(task.hints_dir, [2], []):
                parts.append(f"## Description\n\n{h.text}")
        except UserError:
            pass
    if task.reference_dir is not None and task.reference_dir.is_dir():
        diff = reference_diff(task.template_dir, task.reference_dir, task.editable)
        if diff.strip():
            parts.append(f"## The expert's diff\n\n```diff\n{diff.rstrip()}\n```")
    if not parts:
        raise UserError(f"task {task_id} has neither a level-2 description nor a reference solution to judge against")
    return "\n\n".join(parts)
