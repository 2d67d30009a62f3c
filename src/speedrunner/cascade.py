"""Cascaded runs: the agent climbs a ladder on its own code.

``speedrunner cascade suite=S records=A-B [beyond=M] OVERRIDES`` runs one ordinary search per transition
R -> R+1 (R = A .. B-1), each a normal run folder under the cascade folder:

- step 1 starts from record A's script (the task's own template);
- step i > 1 starts from the best node of step i-1: its files (the node's manifest, nothing its run left
  behind) are copied to ``roots/step_NN/`` and the step runs task ``record_R`` with
  ``+task.root_from=roots/step_NN`` (runner.with_root), so v_0 is the agent's code while the command,
  metric, validity conditions, protected and hidden files, reference and hints stay those of task R;
- the hints of transition R -> R+1 (``hints=[1]`` picks level 1 of task R's hint folder);
- the best node of a step is the node the trusted re-evaluation chose when the step has one
  (``summary.json`` ``reeval``), else the best node by its measured metric;
- the chain stops when a step yields no valid node faster than its root (``require_faster=false``: no
  valid agent node at all), or after the last record; ``beyond=M`` adds M steps without hints on the
  last transition's task, and a claim of beating record B is made only when the chain's final code
  passes the ladder's significance protocol against record B on this machine (repeated interleaved
  timings, one-sided Welch p < 0.01, target loss reached; scoring/calibration.py's statistics).

Every step is resumable like a single run; the cascade itself is resumable by running the same command
again or ``speedrunner cascade --resume DIR``: finished steps are read back, the interrupted one is
resumed with the normal resume, the rest run. ``cascade.json`` says what happened (docs/CASCADES.md) and
``cascade.png`` plots the chain's cumulative speedup beside the reference ladder on this machine.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import statistics
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from speedrunner.core.errors import UserError
from speedrunner.workspace.fsutil import atomic_write_json, read_json, sha256_file

SCHEMA = 1
CASCADE_FILE = "cascade.json"
PLOT_FILE = "cascade.png"
OWN_KEYS = ("suite", "records", "beyond", "require_faster", "claim_runs", "run_dir")
ALPHA = 0.01


# ------------------------------------------------------------------------------------------ the spec
@dataclass
class CascadeSpec:
    suite: str
    first: int
    last: int
    beyond: int = 0
    require_faster: bool = True
    claim_runs: int = 5
    overrides: list[str] = field(default_factory=list)  # Hydra overrides given to every step

    def key(self) -> dict[str, Any]:
        return asdict(self)


def _bool(key: str, v: str) -> bool:
    if v.lower() in ("true", "1", "yes"):
        return True
    if v.lower() in ("false", "0", "no"):
        return False
    raise UserError(f"cascade: {key}={v!r}: expected true or false")


def _int(key: str, v: str, lo: int = 0) -> int:
    try:
        n = int(v)
    except ValueError:
        raise UserError(f"cascade: {key}={v!r}: expected a whole number") from None
    if n < lo:
        raise UserError(f"cascade: {key} must be {lo} or more")
    return n


def split_args(args: list[str]) -> tuple[dict[str, str], list[str]]:
    """The cascade's own ``key=value`` arguments, and the Hydra overrides passed to every step."""
    own: dict[str, str] = {}
    rest: list[str] = []
    for a in args:
        key, eq, value = a.partition("=")
        if eq and key in OWN_KEYS:
            own[key] = value
        else:
            rest.append(a)
    for o in rest:
        key = o.lstrip("+~").split("=", 1)[0]
        if key in ("task", "task.id", "task.root_from"):
            raise UserError(f"cascade: {key} is chosen by the cascade (suite=..., records=...); "
                            "pass only task.size=... and other overrides")
    return own, rest


def suite_tasks(suite: str, task_paths: list[str] | tuple[str, ...] = ()) -> dict[int, dict[str, Any]]:
    """record number -> {id, path, suite} of every task of a suite: its ``suite`` field, one of its
    ``vars.suites``, or an id under ``suite/`` (built-in and imported upstream suites alike)."""
    from speedrunner.tasks.registry import list_tasks
    from speedrunner.tasks.spec import read_spec

    out: dict[int, dict[str, Any]] = {}
    for tid, path in list_tasks(task_paths).items():
        try:
            raw = read_spec(path)
        except UserError:
            continue
        rec = raw.get("record")
        suites = {raw.get("suite")} | set((raw.get("vars") or {}).get("suites") or [])
        if rec is None or not (suite in suites or tid.startswith(f"{suite}/")):
            continue
        if int(rec) in out:
            raise UserError(f"suite {suite!r}: two tasks for record {rec}: {out[int(rec)]['id']} and {tid}")
        out[int(rec)] = {"id": tid, "path": str(path), "suite": raw.get("suite") or suite}
    return out


def parse_range(spec: str, records: list[int], suite: str) -> tuple[int, int]:
    """``1-3`` -> (1, 3): transitions 1->2 and 2->3. The last record only needs to be the previous
    task's reference. ``all``: every transition of the suite."""
    if not records:
        raise UserError(f"suite {suite!r} has no tasks with a record number; see 'speedrunner tasks'")
    top = max(records) + 1
    if spec in ("", "all"):
        a, b = min(records), top
    else:
        m = re.fullmatch(r"\s*(\d+)\s*-\s*(\d+)\s*", spec)
        if not m:
            raise UserError(f"cascade: records={spec!r}: write a range such as 1-3 (records 1 to 3), or all")
        a, b = int(m.group(1)), int(m.group(2))
    if b <= a:
        raise UserError(f"cascade: records={spec}: the range needs at least two records (e.g. {a}-{a + 1})")
    missing = [r for r in range(a, b) if r not in records]
    if missing:
        raise UserError(f"cascade: suite {suite!r} has no task for transition(s) "
                        f"{', '.join(f'{r}->{r + 1}' for r in missing)}; it has records "
                        f"{min(records)}-{top}")
    return a, b


def _quote(v: str) -> str:
    """A path as a Hydra override value."""
    if re.fullmatch(r"[A-Za-z0-9_./~:+-]+", v):
        return v
    return "'" + v.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _searchpath(config_dir: str | None) -> list[str]:
    return [f"hydra.searchpath=[file://{Path(config_dir).expanduser().resolve()}]"] if config_dir else []


def _has_key(overrides: list[str], key: str) -> bool:
    return any(o.lstrip("+~").split("=", 1)[0] == key for o in overrides)


# ------------------------------------------------------------------------------------------ steps
@dataclass
class Step:
    n: int
    mode: str  # ladder | beyond
    record: int  # the task's record R (transition R -> R+1)
    task_id: str
    beyond_index: int = 0

    @property
    def name(self) -> str:
        return f"step_{self.n:02d}_" + (f"record_{self.record}" if self.mode == "ladder" else f"beyond_{self.beyond_index}")

    @property
    def target(self) -> int | None:
        return self.record + 1 if self.mode == "ladder" else None


def plan(spec: CascadeSpec, tasks: dict[int, dict[str, Any]]) -> list[Step]:
    steps = [Step(i + 1, "ladder", r, tasks[r]["id"]) for i, r in enumerate(range(spec.first, spec.last))]
    last_task = tasks[spec.last - 1]["id"]  # the last transition's rules; its FSR > 1 means beating record B
    steps += [Step(len(steps) + j, "beyond", spec.last - 1, last_task, j) for j in range(1, spec.beyond + 1)]
    return steps


def best_of_step(run_dir: Path, require_faster: bool = True) -> dict[str, Any]:
    """The step's chosen node and why the chain goes on or stops, from its summary.json and node results.

    The trusted re-evaluation's chosen node when the step has a re-evaluation, else the best node by its
    measured metric; it must be valid and (with ``require_faster``) faster than the step's root v_0."""
    s = read_json(run_dir / "summary.json")
    minimize = s.get("direction", "minimize") != "maximize"

    def better(a: float, b: float) -> bool:
        return a < b if minimize else a > b

    root_metric = s.get("baseline_metric")
    reeval = s.get("reeval")
    best, metric, source = None, None, None
    if isinstance(reeval, dict):
        chosen = reeval.get("chosen_node")
        if chosen is not None:
            best, metric, source = int(chosen), reeval["nodes"][str(chosen)]["metric_mean"], "reeval"
    else:
        if s.get("best_node") not in (None, 0):
            best, metric, source = int(s["best_node"]), s.get("best_metric"), "search"
        elif not require_faster:  # the best valid agent node, even if the root was faster
            cands = []
            for d in (run_dir / "nodes").glob("v_*"):
                try:
                    res = read_json(d / "result.json")
                    nid = int(d.name[2:])
                except (OSError, ValueError):
                    continue
                if nid != 0 and res.get("status") == "valid" and res.get("metric") is not None:
                    cands.append((res["metric"] if minimize else -res["metric"], -nid, nid, res["metric"]))
            if cands:
                _, _, best, metric = min(cands)
                source = "search"
    n_valid = int(s.get("n_valid") or 0)
    out: dict[str, Any] = {"status": s.get("status"), "stop_reason": s.get("stop_reason"),
                           "root_metric": root_metric, "best_node": best, "metric": metric,
                           "metric_source": source, "n_nodes": s.get("n_nodes"), "n_valid": n_valid,
                           "fsr": s.get("fsr"), "t_R": s.get("t_R"), "t_next": s.get("t_next"),
                           "fsr_source": s.get("fsr_source")}
    faster = best is not None and metric is not None and (root_metric is None or better(metric, root_metric))
    out["faster_than_root"] = bool(faster)
    out["speedup_over_root"] = (_speedup(root_metric, metric, minimize) if best is not None else None)
    if s.get("status") != "finished":  # a budget cap stopped it: 'speedrunner resume' it, then the cascade
        out["stop"] = f"step_not_finished: {s.get('stop_reason') or s.get('status')}"
    elif best is None and n_valid == 0:
        out["stop"] = "no_valid_node"
    elif best is None and isinstance(reeval, dict):
        out["stop"] = "no_valid_node_passed_reeval"
    elif best is None or (require_faster and not faster):
        out["stop"] = "not_faster"
    else:
        out["stop"] = None
    rp = run_dir / "nodes" / f"v_{best}" / "repro.json"
    if best is not None and rp.is_file():  # how much of the record's change the chosen node reproduced
        repro = read_json(rp)
        out["repro"] = {k: repro.get(k) for k in ("line_recall", "line_precision", "hunk_recall")}
    elif isinstance(s.get("repro"), dict):
        out["repro"] = {k: s["repro"].get(k) for k in ("line_recall", "line_precision", "hunk_recall")}
    return out


def _speedup(a: float | None, b: float | None, minimize: bool = True) -> float | None:
    if not a or not b:
        return None
    return round(a / b if minimize else b / a, 6)


def _node_files(run_dir: Path, node_id: int) -> dict[str, Path]:
    from speedrunner.workspace.store import NodeStore

    store = NodeStore(run_dir)
    node = store.load_all()[node_id]
    ws = store.workspace(node_id)
    return {rel: ws / rel for rel in sorted(node.files)}


def _copy_files(files: dict[str, Path], dst: Path) -> Path:
    """Write ``files`` into ``dst`` whole or not at all (a temporary folder, renamed)."""
    if dst.is_dir():
        return dst
    tmp = dst.with_name(dst.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    for rel, src in files.items():
        (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, tmp / rel)
    tmp.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, dst)
    return dst


def _walk(root: Path, keep: Callable[[str], bool]) -> dict[str, Path]:
    from speedrunner.workspace.store import SKIP_DIRS

    return {p.relative_to(root).as_posix(): p for p in sorted(root.rglob("*"))
            if p.is_file() and not SKIP_DIRS.intersection(p.relative_to(root).parts)
            and keep(p.relative_to(root).as_posix())}


def template_files(task) -> dict[str, Path]:
    """Record R's code: the task's template files (what v_0 of a normal run of task R gets)."""
    from speedrunner.workspace.store import matches

    return _walk(task.template_dir, lambda rel: matches(rel, task.template_include))


def record_files(task) -> dict[str, Path]:
    """Record R+1's code: the task's template files with its reference folder's files (those the
    template includes or the model may edit, task.yaml aside) laid over them."""
    from speedrunner.workspace.store import matches

    out = template_files(task)
    if task.reference_dir is not None:
        out.update(_walk(task.reference_dir, lambda rel: rel != "task.yaml" and (
            matches(rel, task.template_include) or matches(rel, task.editable))))
    return out


def _same_files(a: dict[str, Path], b: dict[str, Path]) -> bool:
    return set(a) == set(b) and all(sha256_file(a[k]) == sha256_file(b[k]) for k in a)


# ------------------------------------------------------------------------------------------ the cascade
class Cascade:
    """One cascade folder. ``run()`` runs (or resumes) it and returns the cascade.json document."""

    def __init__(self, spec: CascadeSpec, cascade_dir: Path, config_dir: str | None = None,
                 log: Callable[[str], None] = print,
                 progress: Callable[[Any], AbstractContextManager] | None = None):
        self.spec = spec
        self.dir = Path(cascade_dir)
        self.config_dir = config_dir
        self.log = log
        self.progress = progress or (lambda run: nullcontext())
        self.steps_done: list[dict[str, Any]] = []
        self.context: dict[str, Any] = {}

    # ---- config
    def _overrides(self, step: Step, run_dir: Path, root: Path | None) -> list[str]:
        ov = list(self.spec.overrides)
        if step.mode == "beyond":  # innovation mode: no hints
            ov = [o for o in ov if o.lstrip("+~").split("=", 1)[0] != "hints"] + ["hints=[]"]
        if not _has_key(ov, "task.size"):
            ov.append("task.size=null")  # the task's default size, whatever the config's default task has
        ov += [f"task.id={_quote(step.task_id)}", f"run_dir={_quote(str(run_dir))}"]
        if root is not None:
            ov.append(f"+task.root_from={_quote(str(root.resolve()))}")
        return _searchpath(self.config_dir) + ov

    def _compose(self, overrides: list[str]):
        from speedrunner.runner import compose

        cfg = compose(overrides)
        if cfg.model.get("path") and cfg.model.path != "???":
            cfg.model.path = str(Path(str(cfg.model.path)).expanduser().resolve())
        return cfg

    # ---- one step
    def _run_step(self, step: Step, root: Path | None) -> None:
        from speedrunner.runner import build, check_task_unchanged, load_run_config, save_config

        run_dir = self.dir / step.name
        if (run_dir / "config.yaml").is_file() and (run_dir / "journal.jsonl").is_file():
            self.log(f"step {step.n} ({step.name}): resuming {run_dir}")
            cfg, _ = load_run_config(run_dir, [])
            run = build(cfg, run_dir)
            check_task_unchanged(run_dir, run.task)
        else:
            if run_dir.exists():  # cut off before its config was written: nothing in it to keep
                shutil.rmtree(run_dir)
            overrides = self._overrides(step, run_dir, root)
            cfg = self._compose(overrides)
            run = build(cfg, run_dir)
            run.on_started = lambda: save_config(cfg, run_dir, overrides, run.task)
            self.log(f"step {step.n} ({step.name}): {step.task_id}, root "
                     f"{'record ' + str(step.record) + ' script' if root is None else root}; run folder {run_dir}")
        self.context.setdefault("threads", run.executor.threads)
        self.context.setdefault("size", run.task.size)
        self.context.setdefault("task_suite", run.task.suite)
        info = {"dir": str(self.dir.resolve()), "step": step.n, "mode": step.mode, "record": step.record}
        run.summary_hooks.append(lambda _run: {"cascade": info})
        with self.progress(run):
            run.run()

    def _step_root(self, step: Step, prev: dict[str, Any] | None) -> tuple[Path | None, dict[str, Any]]:
        if prev is None:
            return None, {"kind": "record", "record": step.record}
        src_dir = self.dir / prev["run_dir"]
        root = _copy_files(_node_files(src_dir, prev["best_node"]), self.dir / "roots" / f"step_{step.n:02d}")
        return root, {"kind": "node", "step": prev["step"], "run_dir": prev["run_dir"], "node": prev["best_node"],
                      "path": str(root.relative_to(self.dir))}

    # ---- the whole chain
    def _lock(self):
        self.dir.mkdir(parents=True, exist_ok=True)
        f = open(self.dir / ".lock", "w")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.close()
            raise UserError(f"{self.dir} is in use by another speedrunner cascade") from None
        return f

    def _check_config(self) -> None:
        path = self.dir / CASCADE_FILE
        if path.is_file():
            doc = read_json(path)
            have = doc.get("config")
            if self.config_dir is None:  # --resume without --config-dir: the one the cascade started with
                self.config_dir = doc.get("config_dir")
            if have is not None and have != self.spec.key():
                raise UserError(f"{self.dir} holds another cascade ({json.dumps(have)}); resume it with "
                                f"'speedrunner cascade --resume {self.dir}' or choose another run_dir=")

    def run(self) -> dict[str, Any]:
        lock = self._lock()
        try:
            self._check_config()
            return self._run()
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
            lock.close()

    def _run(self) -> dict[str, Any]:
        from speedrunner.runner import compose

        spec = self.spec
        tasks = suite_tasks(spec.suite, list(compose(_searchpath(self.config_dir) + spec.overrides).task_paths))
        self.tasks = tasks
        steps = plan(spec, tasks)
        self.steps_done = []
        self._write(steps, status="running")
        prev: dict[str, Any] | None = None
        stopped = None
        for step in steps:
            root, root_source = self._step_root(step, prev)
            run_dir = self.dir / step.name
            summary = run_dir / "summary.json"
            finished = summary.is_file() and read_json(summary).get("status") == "finished"
            if finished:
                self.log(f"step {step.n} ({step.name}): finished before")
            else:
                self._run_step(step, root)
            res = best_of_step(run_dir, spec.require_faster)
            if "size" not in self.context:
                self.context["size"] = read_json(summary).get("size")
            rec = {"step": step.n, "mode": step.mode, "record": step.record, "target_record": step.target,
                   "task": step.task_id, "run_dir": step.name, "root_source": root_source, **res}
            if res["best_node"] is not None and step.mode == "ladder":
                target = record_files(self._task(step))
                rec["best_equals_record"] = _same_files(_node_files(run_dir, res["best_node"]), target)
            stop = res.pop("stop")
            rec.pop("stop", None)
            if stop is None and step is steps[-1]:
                stop = "last_record" if step.mode == "ladder" else "beyond_done"
            rec["stopped_because"] = stop
            self.steps_done.append(rec)
            self.log(f"step {step.n}: best v_{rec['best_node']} {rec['metric']} ({rec['metric_source']}), root "
                     f"{rec['root_metric']}" + (f"; chain stops: {stop}" if stop else ""))
            self._write(steps, status="running")
            if stop is not None:
                stopped = stop
                break
            prev = rec
        claim = self._claim() if any(s["mode"] == "beyond" for s in self.steps_done) else None
        doc = self._write(steps, status="finished", stopped=stopped, claim=claim)
        try:
            from speedrunner.report.plots import plot_cascade

            plot_cascade(doc, self.dir / PLOT_FILE)
            doc["plot"] = PLOT_FILE
            atomic_write_json(self.dir / CASCADE_FILE, doc)
        except Exception as e:  # a missing plot must not lose the cascade's result
            self.log(f"cascade plot failed: {type(e).__name__}: {e}")
        return doc

    def _task(self, step: Step):
        """Task R at the cascade's size (no data preparation: for file lists and placeholders only)."""
        from speedrunner.tasks.spec import load_task

        key = (step.task_id, self.context.get("size"))
        cache = self.context.setdefault("_tasks", {})
        if key not in cache:
            cache[key] = load_task(Path(self.tasks[step.record]["path"]), step.task_id, size=self.context.get("size"))
        return cache[key]

    # ---- reference ladder, speedups, the document
    def _reference_ladder(self) -> dict[str, Any]:
        """Times of the records on this machine: the calibration file when it covers them, else what the
        steps measured: a step's baseline when its root is the record's own code, and FSR's on-the-fly run
        of the next record."""
        from speedrunner.scoring.calibration import find_calibration, fingerprint

        threads = int(self.context.get("threads") or self._step_cfg_value("executor", "threads", 1))
        size = self.context.get("size") or self._summary_value("size")
        suite = self.context.get("task_suite") or self.tasks[self.spec.first]["suite"]
        recs = range(self.spec.first, self.spec.last + 1)
        cal = find_calibration(suite, size, threads)
        if cal is not None and all(str(r) in cal.get("records", {}) and cal["records"][str(r)].get("mean_ms")
                                   for r in (self.spec.first, self.spec.last)):
            times = {str(r): cal["records"][str(r)]["mean_ms"] for r in recs if str(r) in cal["records"]}
            out = {"source": "calibration", "file": cal.get("_path"), "fingerprint": cal.get("fingerprint"),
                   "times": times,
                   "significant": {str(r): cal["records"][str(r)].get("significant") for r in recs
                                   if str(r) in cal["records"]}}
        else:
            seen: dict[str, list[float]] = {}
            for s in self.steps_done:
                if s["mode"] != "ladder":
                    continue
                root_is_record = s["root_source"]["kind"] == "record" or self._root_is_record(s)
                if root_is_record and s.get("root_metric") is not None:
                    seen.setdefault(str(s["record"]), []).append(s["root_metric"])
                if s.get("fsr_source") == "on_the_fly" and s.get("t_next") is not None:
                    seen.setdefault(str(s["record"] + 1), []).append(s["t_next"])
            times = {k: statistics.fmean(v) for k, v in sorted(seen.items(), key=lambda kv: int(kv[0]))}
            out = {"source": "steps", "file": None, "fingerprint": fingerprint(threads), "times": times}
        t1 = out["times"].get(str(self.spec.first))
        out["speedup_over_first"] = {k: _speedup(t1, v) for k, v in out["times"].items()}
        out.update({"size": size, "threads": threads, "suite": suite})
        return out

    def _root_is_record(self, s: dict[str, Any]) -> bool:
        """Whether a step's root is byte for byte record R's own code (then its baseline times record R)."""
        root = self.dir / s["root_source"].get("path", "")
        if not root.is_dir():
            return False
        mine = {p.relative_to(root).as_posix(): p for p in root.rglob("*") if p.is_file()}
        return _same_files(mine, template_files(self._task(Step(s["step"], "ladder", s["record"], s["task"]))))

    def _step_cfg_value(self, section: str, key: str, default: Any) -> Any:
        from omegaconf import OmegaConf

        for s in self.steps_done:
            p = self.dir / s["run_dir"] / "config.yaml"
            if p.is_file():
                return OmegaConf.load(p).get(section, {}).get(key, default)
        return default

    def _summary_value(self, key: str) -> Any:
        for s in self.steps_done:
            p = self.dir / s["run_dir"] / "summary.json"
            if p.is_file():
                return read_json(p).get(key)
        return None

    def _write(self, steps: list[Step], status: str, stopped: str | None = None,
               claim: dict[str, Any] | None = None) -> dict[str, Any]:
        ladder = self._reference_ladder() if self.steps_done else None
        t1 = ladder["times"].get(str(self.spec.first)) if ladder else None
        for s in self.steps_done:
            s["speedup_over_first"] = _speedup(t1, s["metric"]) if s["best_node"] is not None else None
            tgt = s.get("target_record")
            s["t_record"] = ladder["times"].get(str(tgt)) if ladder and tgt is not None else None
            s["t_record_source"] = ladder["source"] if s["t_record"] is not None else None
            s["speedup_over_first_record_ref"] = (ladder["speedup_over_first"].get(str(tgt))
                                                  if ladder and tgt is not None else None)
        good = [s for s in self.steps_done if s["best_node"] is not None
                and s["stopped_because"] in (None, "last_record", "beyond_done")]
        final = good[-1] if good else None
        reached = self.spec.first
        for s in self.steps_done:
            if s["mode"] == "ladder" and s["stopped_because"] in (None, "last_record"):
                reached = s["target_record"]
        doc = {
            "schema": SCHEMA, "status": status, "suite": self.spec.suite,
            "records": [self.spec.first, self.spec.last], "first_record": self.spec.first,
            "last_record": self.spec.last, "beyond": self.spec.beyond, "config": self.spec.key(),
            "config_dir": self.config_dir,
            "planned_steps": [{"step": s.n, "name": s.name, "mode": s.mode, "record": s.record, "task": s.task_id}
                              for s in steps],
            "steps": self.steps_done,
            "stopped_because": stopped, "stopped_at_step": (self.steps_done[-1]["step"] if stopped and
                                                            self.steps_done else None),
            "broke_down": bool(stopped) and stopped not in ("last_record", "beyond_done"),
            "record_reached": reached,
            "final": None if final is None else {"step": final["step"], "run_dir": final["run_dir"],
                                                 "node": final["best_node"], "metric": final["metric"],
                                                 "speedup_over_first": final["speedup_over_first"]},
            "t_first_record": t1,
            "reference_ladder": ladder,
            "claim": claim,
            "updated": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        atomic_write_json(self.dir / CASCADE_FILE, doc)
        return doc

    # ---- the claim of beating the last record
    def _claim(self) -> dict[str, Any] | None:
        """Time the chain's final code against record B, interleaved, ``claim_runs`` times each, and apply
        the ladder's protocol. Runs are kept in claim/results.json, so a resumed cascade redoes none."""
        from speedrunner.scoring.calibration import fingerprint, run_record_once

        beyond = [s for s in self.steps_done if s["mode"] == "beyond"]
        source = None
        for s in reversed(self.steps_done):
            if s["best_node"] is not None and (s["stopped_because"] in (None, "beyond_done", "last_record")):
                source = s
                break
        if source is None or source["mode"] != "beyond" or not any(b["faster_than_root"] for b in beyond):
            return {"made": False, "beats_last_record": False,
                    "reason": "no step past the last record found a valid node faster than its root"}
        runs = self.spec.claim_runs
        if runs < 2:
            return {"made": False, "beats_last_record": False,
                    "reason": f"claim_runs={runs}: the significance test needs 2 runs or more of each"}
        from omegaconf import OmegaConf

        from speedrunner.runner import load_task_from

        step_dir = self.dir / source["run_dir"]
        cfg = OmegaConf.load(step_dir / "config.yaml")
        task = load_task_from(cfg)
        executor = _executor(cfg)
        work = self.dir / "claim"
        agent_dir = _copy_files(_node_files(step_dir, source["best_node"]), work / "agent_code")
        record_dir = _copy_files(record_files(self._task(Step(0, "ladder", self.spec.last - 1,
                                                              self.tasks[self.spec.last - 1]["id"]))),
                                 work / "record_code")
        cache = work / "results.json"
        done: dict[str, Any] = read_json(cache) if cache.is_file() else {}
        name = task.metric.name
        for k in range(runs):
            for who, folder in (("record", record_dir), ("agent", agent_dir)):
                key = f"{who}_{k}"
                if key in done:
                    continue
                self.log(f"claim: run {k + 1}/{runs} of the {'agent' if who == 'agent' else 'last record'}'s code")
                res = run_record_once(_with_all_files(task, folder), folder, work / "runs" / key, executor,
                                      extra_env={"SPEEDRUNNER_SEED": str(1337 + k)})
                done[key] = {"metric": res.get(name), "val_loss": res.get("val_loss"),
                             "valid": bool(res.get("valid")), "reason": res.get("reason", "")}
                atomic_write_json(cache, done, durable=True)
        verdict = claim_verdict([done[f"agent_{k}"] for k in range(runs)],
                                [done[f"record_{k}"] for k in range(runs)],
                                task.vars.get("target_val_loss"), task.metric.direction != "maximize")
        return {"made": True, "last_record": self.spec.last, "runs": runs, "agent_step": source["step"],
                "agent_node": source["best_node"], **verdict, "fingerprint": fingerprint(executor.threads)}


def claim_verdict(agent: list[dict[str, Any]], record: list[dict[str, Any]], target: Any,
                  minimize: bool = True) -> dict[str, Any]:
    """The ladder's significance protocol (scoring/calibration.py's tests) on repeated runs of the agent's
    code and of the last record (each ``{metric, val_loss, valid}``): the agent beats the record only if
    every one of its runs is valid, its val_loss is below the target (one-sided one-sample t-test,
    p < 0.01) and its times are below the record's (one-sided Welch t-test, p < 0.01)."""
    from speedrunner.scoring.calibration import below_target, welch_less

    ta = [r["metric"] for r in agent if r["valid"] and r["metric"] is not None]
    tr = [r["metric"] for r in record if r["valid"] and r["metric"] is not None]
    losses = [r["val_loss"] for r in agent if r.get("val_loss") is not None]
    p_faster = welch_less(ta, tr) if minimize else welch_less([-x for x in ta], [-x for x in tr])
    p_target = below_target(losses, float(target)) if target not in (None, "") and losses else None
    all_valid = bool(agent) and all(r["valid"] for r in agent)
    reaches = bool(all_valid and (p_target is None or p_target < ALPHA))
    beats = bool(reaches and p_faster is not None and p_faster < ALPHA)
    a_mean = statistics.fmean(ta) if ta else None
    r_mean = statistics.fmean(tr) if tr else None
    return {"beats_last_record": beats, "agent_mean": a_mean, "record_mean": r_mean,
            "speedup_over_last_record": _speedup(r_mean, a_mean, minimize), "p_faster": p_faster,
            "p_below_target": p_target, "target_val_loss": target, "all_valid": all_valid,
            "reaches_target": reaches, "alpha": ALPHA, "agent": agent, "record": record,
            "protocol": "interleaved runs (record, agent) x claim_runs with SPEEDRUNNER_SEED=1337+k; one-sided "
                        "Welch t-test of the agent's times below the record's, p < 0.01; every agent run valid "
                        "and its val_loss below the target (one-sided t-test, p < 0.01)"}


def _with_all_files(task, folder: Path):
    """``run_record_once`` copies the template files its task includes: all of the folder's."""
    import dataclasses
    import glob

    names = [p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()]
    return dataclasses.replace(task, template_include=[glob.escape(n) for n in names])


def _executor(cfg):
    from speedrunner.execution.local import LocalExecutor

    ex = cfg.executor
    return LocalExecutor(timeout_s=ex.get("timeout_s"), threads=int(ex.get("threads", 1)),
                         max_log_bytes=int(ex.get("max_log_bytes", 64 << 20)),
                         memory_limit_mb=ex.get("memory_limit_mb"), network=bool(ex.get("network", False)),
                         cpu_tolerance=float(ex.get("cpu_tolerance", 1.5)),
                         cpus=list(ex.cpus) if ex.get("cpus") else None, sandbox=str(ex.get("sandbox", "auto")))


# ------------------------------------------------------------------------------------------ entry points
def spec_from_args(args: list[str], config_dir: str | None = None) -> tuple[CascadeSpec, str | None]:
    """(spec, run_dir or None) from ``suite=... records=... [beyond=M] OVERRIDES``."""
    from speedrunner.runner import compose

    own, overrides = split_args(args)
    if "suite" not in own:
        raise UserError("cascade: give suite=NAME (e.g. suite=nanogpt_mini) and records=A-B (e.g. records=1-3)")
    if config_dir and not Path(config_dir).expanduser().is_dir():
        raise UserError(f"--config-dir: {config_dir} is not a folder")
    cfg = compose(_searchpath(config_dir) + overrides)
    tasks = suite_tasks(own["suite"], list(cfg.task_paths))
    first, last = parse_range(own.get("records", "all"), sorted(tasks), own["suite"])
    spec = CascadeSpec(suite=own["suite"], first=first, last=last, beyond=_int("beyond", own.get("beyond", "0")),
                       require_faster=_bool("require_faster", own.get("require_faster", "true")),
                       claim_runs=_int("claim_runs", own.get("claim_runs", "5")), overrides=overrides)
    return spec, own.get("run_dir")


def default_dir(spec: CascadeSpec, config_dir: str | None = None) -> Path:
    """The same command gives the same folder, so running it again resumes the cascade."""
    from speedrunner.runner import compose

    cfg = compose(_searchpath(config_dir) + spec.overrides)
    digest = hashlib.sha256(json.dumps(spec.key(), sort_keys=True).encode()).hexdigest()[:8]

    def clean(x: object) -> str:
        return re.sub(r"[^A-Za-z0-9_.-]+", "-", str(x)).strip("-")

    return Path("runs") / (f"cascade_{clean(spec.suite)}_r{spec.first}-{spec.last}"
                           + (f"+{spec.beyond}" if spec.beyond else "")
                           + f"_{clean(cfg.model.name)}_{clean(cfg.scaffold.name)}_s{cfg.seed}_{digest}")


def load_spec(cascade_dir: Path) -> CascadeSpec:
    path = Path(cascade_dir) / CASCADE_FILE
    if not path.is_file():
        raise UserError(f"{cascade_dir}: not a cascade folder (no {CASCADE_FILE})")
    return CascadeSpec(**read_json(path)["config"])
