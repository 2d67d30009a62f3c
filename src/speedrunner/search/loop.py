"""The scientist loop: pick a node to expand, ideate, code, run, score, record; until the budget ends.

Resume is replay: the loop starts from step 0 again, and every node the policy asks for that already
has a result is taken from disk instead of being made and run again. The policy sees the tree as it
was at each step, so it takes the same decisions; a node that was cut off before its result was
written is discarded and made again.
"""

from __future__ import annotations

import copy
import fcntl
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from speedrunner.agents.agent import Agent, Invalid
from speedrunner.agents.coders.base import Coder, EditError, EditResult
from speedrunner.agents.ideators.base import IdeaContext, Ideator
from speedrunner.agents.listing import render_files
from speedrunner.agents.prompts import history, job_text
from speedrunner.core.errors import UserError
from speedrunner.core.types import Model, Operator, Outcome, Status
from speedrunner.execution.local import LocalExecutor
from speedrunner.llm.errors import BudgetExceeded
from speedrunner.llm.ledger import Ledger
from speedrunner.scoring import integrity
from speedrunner.scoring.outcome import score
from speedrunner.search.policy import GreedyPolicy
from speedrunner.tasks.spec import Task
from speedrunner.workspace.fsutil import atomic_write_json
from speedrunner.workspace.journal import SCHEMA_VERSION, Journal, read_events
from speedrunner.workspace.store import Node, NodeStore, matches, unified_diff

CODER_PROMPT = """\
# Your job
{job}

{idea}# Recent attempts
{history}

# Current code ({node})
{files}

{instructions}"""


class ReplayMismatch(RuntimeError):
    pass


@dataclass
class Budget:
    max_nodes: int = 20


@dataclass
class Progress:
    """Callbacks for live output; the CLI plugs a console printer in."""

    node_started: Callable[[int, Operator, int], None] = lambda nid, op, parent: None
    node_finished: Callable[[Node, Node | None], None] = lambda node, best: None


@dataclass
class SearchRun:
    run_dir: Path
    task: Task
    policy: GreedyPolicy
    coder: Coder
    ideator: Ideator
    models: dict[str, Model]
    system_prompt: str
    executor: LocalExecutor
    budget: Budget
    info: dict[str, Any] = field(default_factory=dict)  # task/scaffold/model names for summary.json
    hints_text: str = ""
    coder_retries: int = 2
    progress: Progress = field(default_factory=Progress)
    ledger: Ledger | None = None  # budget caps (usd, tokens, calls, wall time); None: only max_nodes
    cache: Any = None  # the response cache, closed when the run ends
    reeval_cfg: dict[str, Any] = field(default_factory=dict)  # config 'reeval': runs, all_valid, max_candidates
    analyst: bool = False  # after each run, the analyst model reads the result (kept in result.json and history)
    on_started: Callable[[], None] | None = None  # after the lock and the resume checks, before any work
    # Called once at the end with the finished run; their dicts are merged into summary.json (FSR does this).
    summary_hooks: list[Callable[[SearchRun], dict[str, Any] | None]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.run_dir = Path(self.run_dir)
        self.store = NodeStore(self.run_dir)
        self.journal = Journal(self.run_dir / "journal.jsonl")
        self.tree: dict[int, Node] = {}
        self._current: int | None = None
        self.started = time.time()
        self.spend = {"llm_calls": 0, "tokens_in": 0, "tokens_out": 0, "usd": 0.0}
        self.extra_summary: dict[str, Any] = {}
        self.prior_wall_s = 0.0  # wall time of earlier sessions of this run (resume adds to it)
        self._agents: list[Agent] = []

    # ------------------------------------------------------------------ setup / resume
    def _restore(self) -> None:
        events = read_events(self.journal.path)
        summary = self.run_dir / "summary.json"
        if summary.is_file():
            try:
                self.prior_wall_s = float(json.loads(summary.read_text()).get("wall_s") or 0.0)
            except (ValueError, json.JSONDecodeError):
                self.prior_wall_s = 0.0
        if self.ledger is not None:  # the wall-time cap counts earlier sessions of this run too
            self.ledger.wall_s_before = self.prior_wall_s
        tree = self.store.load_all()
        for nid in sorted(tree):
            if tree[nid].outcome is None and nid != 0:
                self.store.discard(nid)
                self.journal.write("node_discarded", node=nid, reason="interrupted before its result was written")
                del tree[nid]
        for n in tree.values():  # children of discarded nodes are gone too
            n.children = [c for c in n.children if c in tree]
        self.tree = tree
        kept = set(tree)
        # Calls of each kept node's last attempt (a node made again after a crash has earlier calls too).
        per_node: dict[int, list[dict[str, Any]]] = {}
        for e in events:
            if e.get("event") == "node_started":
                per_node[e["node"]] = []
            elif e.get("event") == "llm_call":
                self._count(e)  # spend counts every call made, kept or not: it was paid for
                if e.get("model_index") is not None:
                    per_node.setdefault(e.get("node"), []).append(e)
        kept_calls = [e for nid in sorted(per_node) if nid in kept for e in per_node[nid]]
        for i, model in enumerate(self._unique_models()):
            mine = [e for e in kept_calls if e["model_index"] == i]
            if mine and hasattr(model, "resume"):
                model.resume(mine)

    def _count(self, rec: dict[str, Any]) -> None:
        if self.ledger is not None:
            self.ledger.add_record(rec)
        self.spend["llm_calls"] += 1
        self.spend["tokens_in"] += int(rec.get("tokens_in", 0) or 0)
        self.spend["tokens_out"] += int(rec.get("tokens_out", 0) or 0)
        self.spend["usd"] += float(rec.get("usd", 0.0) or 0.0)

    def _unique_models(self) -> list[Model]:
        seen: list[Model] = []
        for m in self.models.values():
            if all(m is not s for s in seen):
                seen.append(m)
        return seen

    def _model_index(self, role: str) -> int:
        m = self.models[role]
        return next(i for i, s in enumerate(self._unique_models()) if s is m)

    # ------------------------------------------------------------------ main loop
    def run(self) -> dict[str, Any]:
        self._lock()
        try:
            return self._run()
        finally:
            self._unlock()
            from speedrunner.llm.factory import close_models

            close_models(self.models)
            if self.cache is not None:
                self.cache.close()

    def _run(self) -> dict[str, Any]:
        resumed = (self.run_dir / "journal.jsonl").stat().st_size > 0 if (self.run_dir / "journal.jsonl").exists() else False
        self._restore()
        beyond = [i for i in self.tree if i > self.budget.max_nodes]
        if beyond:
            raise UserError(f"{self.run_dir} already has {max(beyond)} agent nodes; budget.max_nodes="
                            f"{self.budget.max_nodes} cannot be lower than that")
        if self.on_started is not None:
            self.on_started()
        self.journal.write("run_resumed" if resumed else "run_started", schema=SCHEMA_VERSION, task=self.task.id,
                           info=self.info, max_nodes=self.budget.max_nodes)
        if 0 not in self.tree:
            root = self.store.create_root(self.task.template_dir, self.task.template_include)
            self.tree[0] = root
            self.journal.write("node_created", node=0, parent=None, operator="root", files=len(root.files))
        if self.tree[0].outcome is None:
            self.progress.node_started(0, Operator.ROOT, -1)
            self._execute(self.tree[0])
        next_id = 1
        while next_id <= self.budget.max_nodes:
            view = self._view(next_id)
            exp = self.policy.next(view)
            n = min(exp.count, self.budget.max_nodes - next_id + 1)
            created = []
            for _ in range(n):
                nid = next_id
                next_id += 1
                if nid not in self.tree:
                    stop = self.ledger.exceeded() if self.ledger is not None else None
                    if stop is None:
                        try:
                            self._make_node(nid, exp.parent, exp.operator, view)
                        except BudgetExceeded as e:
                            stop = str(e) or "a budget cap was reached"
                    if stop is not None:
                        return self._stop(nid, stop)
                    created.append(nid)
                    continue
                if nid in self.tree:
                    have = self.tree[nid]
                    if have.parent != exp.parent or have.operator is not exp.operator:
                        raise ReplayMismatch(
                            f"{self.run_dir}: node v_{nid} on disk is a {have.operator.value} of v_{have.parent}, but "
                            f"the policy now asks for a {exp.operator.value} of v_{exp.parent}; the run folder does "
                            "not belong to this configuration")
                created.append(nid)
            self.policy.observe(created)
        for hook in self.summary_hooks:
            self.extra_summary.update(hook(self) or {})
        summary = self.write_summary(status="finished", stop_reason="max_nodes")
        self.journal.write("run_finished", stop_reason="max_nodes", best_node=summary["best_node"],
                           best_metric=summary["best_metric"])
        self.journal.close()
        return summary

    def _lock(self) -> None:
        """One process per run folder: a second runner (or resume) on the same folder is refused."""
        self._lock_file = open(self.run_dir / ".lock", "w")
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(f"{self.run_dir} is in use by another speedrunner process") from None

    def _unlock(self) -> None:
        lock = getattr(self, "_lock_file", None)
        if lock is not None:
            fcntl.flock(lock, fcntl.LOCK_UN)
            lock.close()
            self._lock_file = None

    def _stop(self, nid: int, reason: str) -> dict[str, Any]:
        """A cap was reached: node ``nid`` is not made (any half-made copy is removed), and the run stops
        cleanly; ``resume`` with a raised cap continues from here."""
        if self.store.path(nid).exists() and not (self.store.path(nid) / "result.json").exists():
            self.store.discard(nid)
        self.tree.pop(nid, None)
        summary = self.write_summary(status="stopped", stop_reason=reason)
        self.journal.write("run_stopped", reason=reason, next_node=nid, spend=dict(self.spend))
        self.journal.close()
        return summary

    def _view(self, upto: int) -> dict[int, Node]:
        """The tree as it stood before node ``upto`` was made (children filtered accordingly)."""
        view = {}
        for i, n in self.tree.items():
            if i < upto:
                c = copy.copy(n)
                c.children = [k for k in n.children if k < upto]
                view[i] = c
        return view

    # ------------------------------------------------------------------ one node
    def _on_call(self, rec: dict[str, Any]) -> None:
        role = rec.get("role", "coder")
        rec = {k: v for k, v in rec.items() if k != "reasoning"} | ({"has_reasoning": True} if "reasoning" in rec else {})
        self._count(rec)
        self.journal.write("llm_call", node=self._current, model_index=self._model_index(role), **rec)

    def _agent(self, role: str) -> Agent:
        agent = Agent(self.models[role], self.system_prompt, role, on_call=self._on_call)
        self._agents.append(agent)
        return agent

    def _make_node(self, nid: int, parent_id: int, op: Operator, view: dict[int, Node]) -> None:
        parent = self.tree[parent_id]
        self._current = nid
        self._agents = []
        self.progress.node_started(nid, op, parent_id)
        self.journal.write("node_started", node=nid, parent=parent_id, operator=op.value)
        files = self.store.read_text_files(parent, self.task.editable)
        files = {p: t for p, t in files.items() if not matches(p, self.task.protected)}
        hist = history(list(view.values()), self.task)
        summary, hypothesis, idea_text, error = "", "", "", None
        if op is not Operator.DEBUG:
            agent = self._agent("ideator") if self.ideator.uses_model else None
            try:
                idea = self.ideator.propose(IdeaContext(self.task, op, parent, files, hist, self.hints_text), agent)
            except BudgetExceeded:
                raise
            except Exception as e:  # a broken ideator ends this node, not the run
                idea = None
                self.ideator.last_error = f"{type(e).__name__}: {e}"
            if idea is None:
                error = f"the ideator gave no usable idea: {getattr(self.ideator, 'last_error', '')}"
            else:
                summary, hypothesis, idea_text = idea.summary, idea.hypothesis, idea.text
        edits: dict[str, str | None] = {}
        if error is None:
            result, error = self._code(op, parent, files, hist, idea_text)
            if result is not None:
                if result.no_change:
                    error = "no change: the coder proposed no edit"
                edits = result.edits
        node = self.store.create_child(parent, nid, op, edits, hypothesis=hypothesis, summary=summary,
                                       coder_error=error)
        self.tree[nid] = node
        transcript = [entry for agent in self._agents for entry in agent.log]
        atomic_write_json(self.store.path(nid) / "transcript.json", transcript)
        self.journal.write("node_created", node=nid, parent=parent_id, operator=op.value,
                           edited=sorted(edits), coder_error=error)
        if error is not None:
            outcome = Outcome(status=Status.BUGGY, valid=False, reason=error)
            self._finish(node, outcome)
        else:
            self._execute(node)

    def _code(self, op: Operator, parent: Node, files: dict[str, str], hist: str,
              idea_text: str) -> tuple[EditResult | None, str | None]:
        prompt = CODER_PROMPT.format(
            job=job_text(self.task, op, parent),
            idea=f"# Idea\n{idea_text}\n\n" if idea_text else "",
            history=hist or "(none yet)", node=parent.name, files=render_files(files),
            instructions=self.coder.instructions())

        def validate(text: str) -> EditResult:
            try:
                result = self.coder.apply(text, files, self.task.protected)
            except EditError as e:
                raise Invalid(str(e)) from None
            outside = [p for p in result.edits if not matches(p, self.task.editable)]
            if outside:
                raise Invalid(f"{', '.join(outside)}: not a file you may edit in this task; editable files match "
                              f"{', '.join(self.task.editable)}. Send the whole reply again without those edits.")
            return result

        try:
            res = self._agent("coder").act(prompt, validate, max_retries=self.coder_retries)
        except BudgetExceeded:
            raise
        except Exception as e:  # a broken coder ends this node, not the run
            return None, f"the coder raised {type(e).__name__}: {e}"
        if not res.ok:
            return None, f"the coder's edits could not be applied after {res.attempts} attempt(s): {res.error}"
        return res.value, None

    def _execute(self, node: Node) -> None:
        ndir = self.store.path(node.id)
        ws = self.store.workspace(node.id)
        guarded = integrity.protected_paths(ws, self.task.protected)
        before = integrity.snapshot(guarded)
        self.journal.write("exec_started", node=node.id, command=self.task.command)
        ex = self.executor.run(self.task.command, cwd=ws, out_dir=ndir, timeout_s=self.task.timeout_s,
                               env=self.task.env, hidden=[Path(h) for h in self.task.hidden])
        self.journal.write("exec_finished", node=node.id, exit_code=ex.exit_code, wall_s=round(ex.wall_s, 4),
                           timed_out=ex.timed_out, killed_reason=ex.killed_reason, cpu_s=ex.cpu_s)
        tampered = integrity.changed(before, integrity.protected_paths(ws, self.task.protected))
        outcome = score(self.task, ex, self.store.files_changed(node) + [f"{p} (protected)" for p in tampered])
        outcome.timings["exec_s"] = round(ex.wall_s, 4)
        if node.id != 0 and self.task.suspicious:
            outcome.flags = integrity.suspicious_flags(self._diff_from_root(node), self.task.suspicious)
        if node.id != 0:
            flag = integrity.untimed_work_flag(self.task, outcome, self.tree[0].outcome)
            if flag:
                outcome.flags.append(flag)
        if self.analyst and node.id != 0:
            outcome.analysis = self._analyse(node, outcome, ndir)
        self._finish(node, outcome)

    def _analyse(self, node: Node, outcome: Outcome, ndir: Path) -> str:
        """The optional analyst step: free text, no retries; a failure leaves the analysis empty."""
        from speedrunner.agents.prompts import analyst_prompt
        from speedrunner.scoring.outcome import read_log, tail

        node.outcome = outcome
        prompt = analyst_prompt(node, self.task, (ndir / "diff.patch").read_text(),
                                tail(read_log(ndir / "stdout.log"), 20))
        node.outcome = None
        res = self._agent("analyst").act(prompt, None, max_retries=0)
        transcript = [entry for agent in self._agents for entry in agent.log]
        atomic_write_json(ndir / "transcript.json", transcript)
        return (res.value or "").strip() if res.ok else ""

    def _diff_from_root(self, node: Node) -> str:
        root, pats = self.tree[0], self.task.editable
        return unified_diff(dict(self.store.read_text_files(root, pats)), dict(self.store.read_text_files(node, pats)))

    def _finish(self, node: Node, outcome: Outcome) -> None:
        self.store.write_result(node, outcome)
        self.journal.write("node_finished", node=node.id, status=outcome.status.value, valid=outcome.valid,
                           metric=outcome.metric, metrics=outcome.metrics, reason=outcome.reason[:2000])
        summary = self.write_summary(status="running")
        best = self.tree.get(summary["best_node"]) if summary["best_node"] is not None else None
        self.progress.node_finished(node, best)

    # ------------------------------------------------------------------ summary
    def best_node(self) -> Node | None:
        return self.policy.best_of(list(self.tree.values()))

    def write_summary(self, status: str, stop_reason: str | None = None) -> dict[str, Any]:
        root = self.tree.get(0)
        base = root.outcome.metric if root and root.outcome and root.outcome.valid else None
        best = self.best_node()
        best_metric = best.outcome.metric if best and best.outcome else None
        speedup = None
        if self.task.metric.kind == "time" and base and best_metric:
            speedup = base / best_metric if self.task.metric.direction == "minimize" else best_metric / base
        agent_nodes = [n for n in self.tree.values() if n.id != 0]
        s = {
            "schema": 1,
            "status": status,
            "stop_reason": stop_reason,
            "task": self.task.id,
            "size": self.task.size,
            **self.info,
            "metric": self.task.metric.name,
            "direction": self.task.metric.direction,
            "n_nodes": len(agent_nodes),
            "n_valid": sum(1 for n in agent_nodes if n.outcome and n.outcome.valid),
            "n_buggy": sum(1 for n in agent_nodes if n.outcome and n.outcome.status is Status.BUGGY),
            "baseline_metric": base,
            "best_metric": best_metric,
            "best_node": best.id if best else None,
            "speedup": speedup,
            "wall_s": round(self.prior_wall_s + time.time() - self.started, 2),
            **self.spend,
            "usd": round(self.spend["usd"], 6),
            **self.extra_summary,
        }
        atomic_write_json(self.run_dir / "summary.json", s)
        return s
