"""The scientist loop: pick a node to expand, ideate, code, run, score, record; until the budget ends.

One worker (``executor.workers=1``, the default): nodes are made one after the other. Resume is replay:
the loop starts from step 0 again, and every node the policy asks for that already has a result is
taken from disk instead of being made and run again. The policy sees the tree as it was at each step,
so it takes the same decisions; a node that was cut off before its result was written is discarded and
made again.

Several workers (``executor.workers=K``): up to K nodes are in flight (being coded or run), each in its
own thread. There is no barrier: when a worker is free and no decided node is waiting, the policy takes
its next step from the nodes finished at that moment. Which nodes have finished depends on timing, so
each step is written to the journal as a ``decision`` event (the node ids it made, parent, operator,
the finished nodes it saw, the number drawn). A resume replays the policy over the logged decisions,
checks that it takes them again, makes the logged nodes that have no result (discarded in-flight nodes,
or nodes decided but never started), and then goes on deciding. One lock serializes the journal, the
tree, the summary and the node store's writes; node ids are given in decision order. Each running node
holds a slot of the device pool (execution/pool.py) while its command runs.
"""

from __future__ import annotations

import copy
import fcntl
import json
import queue
import shutil
import threading
import time
from collections import deque
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
from speedrunner.execution.pool import DevicePool, run_in_slot
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
class _Job:
    """A decided node: made (coded, run, scored) by one worker."""

    nid: int
    parent: int
    op: Operator
    view: dict[int, Node]  # the finished tree as the policy saw it when it decided (the prompt's history)
    step: int
    worker: int | None = None
    agents: list[Agent] = field(default_factory=list)


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
    # Workers and devices (executor.workers, executor.devices, ...): how many nodes are in flight at once and
    # which devices each running node gets. None: one worker, no device management.
    pool: DevicePool | None = None
    # A node whose code is byte-identical to an earlier node's takes that node's result instead of running again.
    reuse_identical: bool = True

    def __post_init__(self) -> None:
        self.run_dir = Path(self.run_dir)
        self.store = NodeStore(self.run_dir)
        self.journal = Journal(self.run_dir / "journal.jsonl")
        self.tree: dict[int, Node] = {}
        self.started = time.time()
        self.spend = {"llm_calls": 0, "tokens_in": 0, "tokens_out": 0, "usd": 0.0}
        self.extra_summary: dict[str, Any] = {}
        self.prior_wall_s = 0.0  # wall time of earlier sessions of this run (resume adds to it)
        if self.pool is None:
            self.pool = DevicePool.build(workers=1)
        self.workers = self.pool.workers
        notes = getattr(self.executor, "notes", None)  # said once before the first node (cli prints them)
        if isinstance(notes, list):
            notes.extend(n for n in self.pool.notes if n not in notes)
        # One lock for everything the workers share: the journal, the tree, the spend, summary.json, the node
        # store's writes (a child's creation rewrites its parent's meta.json) and the progress callbacks.
        self._lock = threading.RLock()
        self._events: list[dict[str, Any]] = []
        self._done: set[int] = set()  # finished nodes, as the scheduler knows them (the policy sees these)
        self._unobserved: list[int] = []  # finished since the policy's last step
        self._decided: dict[int, int] = {}  # node id -> parent, for every id given out
        self._next_id = 1

    # ------------------------------------------------------------------ setup / resume
    def _restore(self) -> None:
        events = read_events(self.journal.path)
        self._events = events
        summary = self.run_dir / "summary.json"
        if summary.is_file():
            try:
                self.prior_wall_s = float(json.loads(summary.read_text()).get("wall_s") or 0.0)
            except (ValueError, json.JSONDecodeError):
                self.prior_wall_s = 0.0
        if self.ledger is not None:  # the wall-time cap counts earlier sessions of this run too
            self.ledger.wall_s_before = self.prior_wall_s
        tree = self.store.load_all()
        pending_job = getattr(self.executor, "pending_job", None)  # executor=slurm: a job may still be running
        for nid in sorted(tree):
            if tree[nid].outcome is None and nid != 0:
                job_id = pending_job(self.store.path(nid)) if pending_job is not None else None
                if job_id:  # its job outlived the runner: keep the node, running it again re-attaches to the job
                    self.journal.write("node_kept", node=nid, reason=f"its job {job_id} is queued, running or done")
                    continue
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

    def _log(self, event: str, **fields: Any) -> dict[str, Any]:
        with self._lock:
            return self.journal.write(event, **fields)

    # ------------------------------------------------------------------ main loop
    def run(self) -> dict[str, Any]:
        self._lock_dir()
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
        extra = {"workers": self.workers} if self.workers > 1 else {}
        self.journal.write("run_resumed" if resumed else "run_started", schema=SCHEMA_VERSION, task=self.task.id,
                           info=self.info, max_nodes=self.budget.max_nodes, **extra)
        if 0 not in self.tree:
            root = self.store.create_root(self.task.template_dir, self.task.template_include)
            self.tree[0] = root
            self.journal.write("node_created", node=0, parent=None, operator="root", files=len(root.files))
        if self.tree[0].outcome is None:
            self.progress.node_started(0, Operator.ROOT, -1)
            self._execute(self.tree[0])
        stopped = self._search()
        if stopped is not None:
            return stopped
        for hook in self.summary_hooks:
            self.extra_summary.update(hook(self) or {})
        summary = self.write_summary(status="finished", stop_reason="max_nodes")
        self.journal.write("run_finished", stop_reason="max_nodes", best_node=summary["best_node"],
                           best_metric=summary["best_metric"])
        self.journal.close()
        return summary

    def _search(self) -> dict[str, Any] | None:
        """Make agent nodes until ``budget.max_nodes`` exist, up to ``workers`` at a time. Returns the
        summary when a budget cap stopped the run, None when the node budget was used up."""
        k = self.workers
        self._done, self._unobserved, self._decided, self._next_id = {0}, [], {}, 1
        pending: deque[_Job] = deque()  # decided, not started; in id order
        if k > 1:
            self._replay_decisions(pending)
        results: queue.Queue[tuple[_Job, str, Any]] = queue.Queue()
        running: dict[int, _Job] = {}
        free_workers = list(range(k))
        stop: str | None = None
        unmade: list[int] = []  # nodes a budget cap cut off while they were being made
        error: BaseException | None = None
        while True:
            while stop is None and error is None and len(running) < k:
                if not pending:
                    if self._next_id > self.budget.max_nodes:
                        break
                    self._decide(pending)  # nodes already on disk (a one-worker resume) are not queued
                    continue
                stop = self.ledger.exceeded() if self.ledger is not None else None
                if stop is not None:
                    break
                job = pending.popleft()
                if k == 1:  # one worker: made here, exactly as a sequential loop would
                    try:
                        self._make_node(job)
                    except BudgetExceeded as e:
                        stop = str(e) or "a budget cap was reached"
                        unmade.append(job.nid)
                    continue
                job.worker = free_workers.pop(0)
                running[job.nid] = job
                threading.Thread(target=self._work, args=(job, results), name=f"speedrunner-v_{job.nid}",
                                 daemon=True).start()
            if not running:
                break
            job, kind, payload = results.get()  # a node ended: a worker is free
            del running[job.nid]
            free_workers.append(job.worker)  # type: ignore[arg-type]
            free_workers.sort()
            if kind == "budget":  # the cap stops new nodes; the nodes in flight end as they would
                stop = stop or payload
                unmade.append(job.nid)
            elif kind == "error" and error is None:
                error = payload
        if error is not None:  # a bug in the loop, coder or executor; raised once the nodes in flight ended
            raise error
        if stop is not None:
            return self._stop(sorted(unmade + [j.nid for j in pending]), stop)
        return None

    def _work(self, job: _Job, results: queue.Queue) -> None:
        """A worker thread: make one node; report how it ended."""
        try:
            self._make_node(job)
        except BudgetExceeded as e:
            results.put((job, "budget", str(e) or "a budget cap was reached"))
        except BaseException as e:  # noqa: BLE001 - handed to the main thread, which raises it
            results.put((job, "error", e))
        else:
            results.put((job, "done", None))

    def _decide(self, pending: deque[_Job]) -> None:
        """One policy step over the nodes finished now: give out the ids of its nodes, in order, and queue
        them (a node already on disk, in a one-worker resume, is taken as it is)."""
        with self._lock:
            self.policy.observe(sorted(self._unobserved))
            self._unobserved = []
            first = self._next_id
            view = self._view(self._done, first)
            exp = self.policy.next(view)
            n = min(exp.count, self.budget.max_nodes - first + 1)
            ids = list(range(first, first + n))
            self._next_id = first + n
            for nid in ids:
                self._decided[nid] = exp.parent
            if self.workers > 1:
                self.journal.write("decision", step=self.policy.step - 1, nodes=ids, parent=exp.parent,
                                   operator=exp.operator.value, count=exp.count, known=sorted(self._done),
                                   best=self.policy.prev_best, draw=self.policy.last_draw)
        for nid in ids:
            have = self.tree.get(nid)
            if have is None or have.outcome is None:  # to make, or made and kept for its still-live job
                if have is not None:
                    self._check_same(have, exp.parent, exp.operator)
                pending.append(_Job(nid, exp.parent, exp.operator, view, self.policy.step - 1))
                continue
            self._check_same(have, exp.parent, exp.operator)
            self._mark_done(nid)

    def _check_same(self, have: Node, parent: int, op: Operator) -> None:
        if have.parent != parent or have.operator is not op:
            raise ReplayMismatch(
                f"{self.run_dir}: node v_{have.id} on disk is a {have.operator.value} of v_{have.parent}, but "
                f"the policy now asks for a {op.value} of v_{parent}; the run folder does "
                "not belong to this configuration")

    def _mark_done(self, nid: int) -> None:
        with self._lock:
            self._done.add(nid)
            self._unobserved.append(nid)

    def _replay_decisions(self, pending: deque[_Job]) -> None:
        """Several workers, on resume: take the policy through the logged decisions again (each step sees
        the finished nodes the log says it saw), check it takes each one again, and queue the logged nodes
        that have no result. Afterwards the policy's state (step, running best, RNG) is where it was."""
        logged = [e for e in self._events if e.get("event") == "decision"]
        known_before: set[int] = {0}
        for d in logged:
            ids = [int(i) for i in d["nodes"]]
            known = {int(i) for i in d["known"]}
            where = f"{self.run_dir}: the decision log (journal.jsonl, step {d.get('step')})"
            lost = sorted(i for i in known if i not in self.tree or self.tree[i].outcome is None)
            if lost:
                raise ReplayMismatch(f"{where} saw v_{lost[0]} finished, but v_{lost[0]} has no result on disk")
            if not ids or ids[0] != self._next_id or ids != list(range(ids[0], ids[0] + len(ids))):
                raise ReplayMismatch(f"{where} gives node ids {ids}; expected them to start at v_{self._next_id}")
            self.policy.observe(sorted(known - known_before - {0}))
            view = self._view(known, ids[0])
            exp = self.policy.next(view)
            got = (exp.parent, exp.operator.value, exp.count, self.policy.last_draw)
            want = (d.get("parent"), d.get("operator"), d.get("count"), d.get("draw"))
            if got != want:
                raise ReplayMismatch(f"{where} holds a {want[1]} of v_{want[0]} (x{want[2]}, draw {want[3]}), but the "
                                     f"policy now takes a {got[1]} of v_{got[0]} (x{got[2]}, draw {got[3]}); the run "
                                     "folder does not belong to this configuration")
            for nid in ids:
                self._decided[nid] = exp.parent
            self._next_id = ids[-1] + 1
            known_before = known
            for nid in ids:
                have = self.tree.get(nid)
                if have is not None:
                    self._check_same(have, exp.parent, exp.operator)
                if have is not None and have.outcome is not None:
                    continue
                if nid <= self.budget.max_nodes:  # never finished (discarded, or kept for its live job) or never started
                    pending.append(_Job(nid, exp.parent, exp.operator, view, int(d.get("step", 0))))
        strays = sorted(i for i in self.tree if i != 0 and i not in self._decided)
        if strays:
            raise ReplayMismatch(f"{self.run_dir}: node v_{strays[0]} is on disk but in no decision of the journal")
        self._done = {i for i, n in self.tree.items() if i == 0 or n.outcome is not None}
        self._unobserved = sorted(self._done - known_before - {0})

    def _lock_dir(self) -> None:
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

    def _stop(self, unmade: list[int], reason: str) -> dict[str, Any]:
        """A cap was reached: the nodes in ``unmade`` are not made (any half-made copy is removed), and the
        run stops cleanly; ``resume`` with a raised cap continues from the first of them."""
        for nid in unmade:
            if self.store.path(nid).exists() and not (self.store.path(nid) / "result.json").exists():
                self.store.discard(nid)
            self.tree.pop(nid, None)
        summary = self.write_summary(status="stopped", stop_reason=reason)
        self.journal.write("run_stopped", reason=reason, next_node=unmade[0], spend=dict(self.spend))
        self.journal.close()
        return summary

    def _view(self, known: set[int], upto: int) -> dict[int, Node]:
        """The finished nodes ``known`` as the policy sees them before node ``upto`` is given out: each with
        the children decided before it (finished or not)."""
        children: dict[int, list[int]] = {}
        for nid, parent in sorted(self._decided.items()):
            if nid < upto:
                children.setdefault(parent, []).append(nid)
        view = {}
        with self._lock:
            for i in sorted(known):
                c = copy.copy(self.tree[i])
                c.children = children.get(i, [])
                view[i] = c
        return view

    # ------------------------------------------------------------------ one node
    def _on_call(self, rec: dict[str, Any], nid: int) -> None:
        role = rec.get("role", "coder")
        rec = {k: v for k, v in rec.items() if k != "reasoning"} | ({"has_reasoning": True} if "reasoning" in rec else {})
        with self._lock:
            self._count(rec)
            self.journal.write("llm_call", node=nid, model_index=self._model_index(role), **rec)

    def _agent(self, job: _Job, role: str) -> Agent:
        agent = Agent(self.models[role], self.system_prompt, role, on_call=lambda rec: self._on_call(rec, job.nid))
        job.agents.append(agent)
        return agent

    def _make_node(self, job: _Job) -> None:
        nid, parent_id, op, view = job.nid, job.parent, job.op, job.view
        parent = self.tree[parent_id]
        kept = self.tree.get(nid)
        if kept is not None and kept.outcome is None:  # made before a crash, its job still live: run (re-attach) only
            with self._lock:
                self.progress.node_started(nid, op, parent_id)
                self.journal.write("node_resumed", node=nid, parent=parent_id, operator=op.value)
            self._execute(kept, job)
            return
        with self._lock:
            self.progress.node_started(nid, op, parent_id)
            self.journal.write("node_started", node=nid, parent=parent_id, operator=op.value,
                               **({"worker": job.worker} if job.worker is not None else {}))
        files = self.store.read_text_files(parent, self.task.editable)
        files = {p: t for p, t in files.items() if not matches(p, self.task.protected)}
        hist = history(list(view.values()), self.task)
        summary, hypothesis, idea_text, error = "", "", "", None
        if op is not Operator.DEBUG:
            # With several workers each node has its own shallow copy, so that e.g. ``last_error`` stays its own.
            ideator = self.ideator if self.workers == 1 else copy.copy(self.ideator)
            agent = self._agent(job, "ideator") if ideator.uses_model else None
            try:
                idea = ideator.propose(IdeaContext(self.task, op, parent, files, hist, self.hints_text), agent)
            except BudgetExceeded:
                raise
            except Exception as e:  # a broken ideator ends this node, not the run
                idea = None
                ideator.last_error = f"{type(e).__name__}: {e}"
            if idea is None:
                error = f"the ideator gave no usable idea: {getattr(ideator, 'last_error', '')}"
            else:
                summary, hypothesis, idea_text = idea.summary, idea.hypothesis, idea.text
        edits: dict[str, str | None] = {}
        if error is None:
            result, error = self._code(job, op, parent, files, hist, idea_text)
            if result is not None:
                if result.no_change:
                    error = "no change: the coder proposed no edit"
                edits = result.edits
        with self._lock:  # the child's creation also rewrites the parent's meta.json
            try:
                node = self.store.create_child(parent, nid, op, edits, hypothesis=hypothesis, summary=summary,
                                               coder_error=error)
            except (OSError, ValueError, UnicodeError) as e:  # e.g. a path the filesystem refuses: the node is buggy
                self.store.discard_tmp(nid)
                error = f"the edits could not be written: {type(e).__name__}: {e}"
                edits = {}
                node = self.store.create_child(parent, nid, op, edits, hypothesis=hypothesis, summary=summary,
                                               coder_error=error)
            self.tree[nid] = node
        transcript = [entry for agent in job.agents for entry in agent.log]
        atomic_write_json(self.store.path(nid) / "transcript.json", transcript)
        self._log("node_created", node=nid, parent=parent_id, operator=op.value, edited=sorted(edits),
                  coder_error=error)
        if error is not None:
            outcome = Outcome(status=Status.BUGGY, valid=False, reason=error)
            self._finish(node, outcome)
        elif (twin := self._twin(node)) is not None:
            self._reuse(node, twin)
        else:
            self._execute(node, job)

    def _twin(self, node: Node) -> Node | None:
        """The earliest finished node that ran exactly this code (byte-identical editable files), if any."""
        if not self.reuse_identical:
            return None
        with self._lock:
            ran = sorted((n for n in self.tree.values() if n.id != node.id and n.outcome is not None
                          and n.outcome.exit_code is not None and n.outcome.duplicate_of is None),
                         key=lambda n: n.id)
        mine = self.store.read_text_files(node, self.task.editable)
        # a run that rewrote its own files ran other code than its workspace now holds: not a twin
        return next((n for n in ran if not self.store.files_changed(n)
                     and self.store.read_text_files(n, self.task.editable) == mine), None)

    def _reuse(self, node: Node, twin: Node) -> None:
        """Give ``node`` the result of ``twin``, which ran the same code: another run of identical code is
        compute spent on a second sample of the noise, and the best of several samples of one program would
        flatter it (the final figure comes from the harness's re-evaluation in any case)."""
        ndir, src = self.store.path(node.id), self.store.path(twin.id)
        for name in ("stdout.log", "stderr.log"):  # the logs of that code, for the viewer and the next prompts
            if (src / name).is_file():
                shutil.copyfile(src / name, ndir / name)
        outcome = Outcome.from_json(twin.outcome.to_json())
        outcome.duplicate_of, outcome.analysis = twin.id, ""
        self._log("exec_skipped", node=node.id, duplicate_of=twin.id)
        self._finish(node, outcome)

    def _code(self, job: _Job, op: Operator, parent: Node, files: dict[str, str], hist: str,
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
            res = self._agent(job, "coder").act(prompt, validate, max_retries=self.coder_retries)
        except BudgetExceeded:
            raise
        except Exception as e:  # a broken coder ends this node, not the run
            return None, f"the coder raised {type(e).__name__}: {e}"
        if not res.ok:
            return None, f"the coder's edits could not be applied after {res.attempts} attempt(s): {res.error}"
        return res.value, None

    def _execute(self, node: Node, job: _Job | None = None) -> None:
        ndir = self.store.path(node.id)
        ws = self.store.workspace(node.id)
        guarded = integrity.protected_paths(ws, self.task.protected)
        before = integrity.snapshot(guarded)
        with self.pool.slot(node.id) as slot:  # given back however the run ends (try/finally)
            devices = slot.to_json() if self.pool.active else {}
            self._log("exec_started", node=node.id, command=self.task.command, **devices)
            ex = run_in_slot(self.executor, slot, self.task.command, cwd=ws, out_dir=ndir,
                             timeout_s=self.task.timeout_s, env=self.task.env,
                             hidden=[Path(h) for h in self.task.hidden], active=self.pool.active)
            self._log("exec_finished", node=node.id, exit_code=ex.exit_code, wall_s=round(ex.wall_s, 4),
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
        if self.analyst and node.id != 0 and job is not None:
            outcome.analysis = self._analyse(node, outcome, ndir, job)
        self._finish(node, outcome)

    def _analyse(self, node: Node, outcome: Outcome, ndir: Path, job: _Job) -> str:
        """The optional analyst step: free text, no retries; a failure leaves the analysis empty."""
        from speedrunner.agents.prompts import analyst_prompt
        from speedrunner.scoring.outcome import read_log, tail

        scored = copy.copy(node)  # the tree's node stays unfinished until its result is written
        scored.outcome = outcome
        prompt = analyst_prompt(scored, self.task, (ndir / "diff.patch").read_text(),
                                tail(read_log(ndir / "stdout.log"), 20))
        res = self._agent(job, "analyst").act(prompt, None, max_retries=0)
        transcript = [entry for agent in job.agents for entry in agent.log]
        atomic_write_json(ndir / "transcript.json", transcript)
        return (res.value or "").strip() if res.ok else ""

    def _diff_from_root(self, node: Node) -> str:
        root, pats = self.tree[0], self.task.editable
        return unified_diff(dict(self.store.read_text_files(root, pats)), dict(self.store.read_text_files(node, pats)))

    def _finish(self, node: Node, outcome: Outcome) -> None:
        with self._lock:
            self.store.write_result(node, outcome)
            self.journal.write("node_finished", node=node.id, status=outcome.status.value, valid=outcome.valid,
                               metric=outcome.metric, metrics=outcome.metrics, reason=outcome.reason[:2000])
            if node.id != 0:
                self._done.add(node.id)
                self._unobserved.append(node.id)
            summary = self.write_summary(status="running")
            best = self.tree.get(summary["best_node"]) if summary["best_node"] is not None else None
            self.progress.node_finished(node, best)

    # ------------------------------------------------------------------ summary
    def best_node(self) -> Node | None:
        with self._lock:
            return self.policy.best_of(list(self.tree.values()))

    def write_summary(self, status: str, stop_reason: str | None = None) -> dict[str, Any]:
        with self._lock:
            return self._write_summary(status, stop_reason)

    def _write_summary(self, status: str, stop_reason: str | None) -> dict[str, Any]:
        root = self.tree.get(0)
        base = root.outcome.metric if root and root.outcome and root.outcome.valid else None
        best = self.best_node()
        best_metric = best.outcome.metric if best and best.outcome else None
        speedup = None
        if self.task.metric.kind == "time" and base and best_metric:
            speedup = base / best_metric if self.task.metric.direction == "minimize" else best_metric / base
        agent_nodes = [n for n in self.tree.values() if n.id != 0 and n.outcome is not None]  # finished ones
        s = {
            "schema": 1,
            "status": status,
            "stop_reason": stop_reason,
            "task": self.task.id,
            "size": self.task.size,
            **self.info,
            **({"workers": self.workers} if self.workers > 1 else {}),
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
