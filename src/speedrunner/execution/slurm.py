"""Run each node as a Slurm job, submitted through submitit (``executor=slurm``).

What happens to one node (``run(command, cwd, out_dir, timeout_s, ...)``, the LocalExecutor's signature):

1. **Submit.** A ``NodeJob`` (command, folders, timeout, env, the in-job executor settings, torchrun) is
   pickled by submitit and submitted with ``sbatch``. Every Slurm setting comes from the config
   (``conf/executor/slurm.yaml``): partition, account, QoS, time limit, GPUs, CPUs, memory, extra
   ``#SBATCH`` lines and setup lines; nothing site-specific is built in. The job id is written to
   ``out_dir/slurm_job.json`` (``nodes/v_N/slurm_job.json``), appended to ``FOLDER/jobs.jsonl`` and
   reported through ``on_event`` (the runner journals it as ``slurm_submitted``).
2. **Inside the job** the node runs exactly as under ``executor=local``: a ``LocalExecutor`` with the same
   settings (sandbox, log cap, memory limit, CPU-time check, the node's timeout), wrapped by torchrun when
   the task asks for it (several nodes: rendezvous at the job's first node, one launcher per node). Logs go
   to ``out_dir`` as usual (shared filesystem); the ``ExecResult`` comes back through submitit's result file.
3. **Wait.** The runner polls the result file and the job's state (``scontrol show job``, else ``sacct``:
   no accounting database is needed). The node's timeout counts from when the job starts running, not
   while it is queued; a job still running ``timeout + cancel_grace_s`` after it started is cancelled
   (``scancel``) and the node ends as timed out. The job's Slurm time limit is the timeout plus margins,
   so Slurm kills it too if the runner is gone.
4. **Preemption and requeue.** A job that is requeued (``scontrol requeue``, preemption with requeue, or
   submitit's own requeue on its USR2 signal) keeps its job id and starts the node over in its next run:
   the runner keeps waiting on the same job, the timeout clock restarts, ``slurm_requeued`` is journaled,
   and the earlier attempt's logs are kept as ``stdout.attempt<K>.log``. A job that is being killed
   (SIGTERM for requeue or cancel) never writes a result, so a half-run node is never scored.
5. **Resume re-attaches.** If the runner dies (even SIGKILL) while a job is queued or running, the job
   goes on. When the same node is run again (``speedrunner resume``), ``slurm_job.json`` is found with the
   same fingerprint (command, folders, env, timeout, settings) and a job that is still queued or running,
   or that finished and left its result: the runner waits on that job instead of submitting another
   (``slurm_reattached``). A job recorded for the same node folder that does not match (the node was made
   again with other code) is cancelled before the new one is submitted.

Ctrl-C leaves a submitted job running (resume re-attaches; ``scancel`` stops it). execution/ imports only
core; submitit is imported when the first job is submitted (the ``slurm`` extra).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from speedrunner.core.errors import UserError
from speedrunner.core.types import ExecResult
from speedrunner.execution.local import LocalExecutor
from speedrunner.execution.torchrun import TorchrunExecutor, TorchrunSpec

JOB_FILE = "slurm_job.json"
ATTEMPTS_FILE = "slurm_attempts.jsonl"
QUEUED = {"PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD", "RESV_DEL_HOLD", "SUSPENDED",
          "STOPPED", "RESIZING", "SIGNALING", "STAGE_OUT"}
RUNNING = {"RUNNING"}
# neither queued nor over: a state the job passes through (at the end of a run, or on its way to a requeue).
# PREEMPTED is treated as over, but an ended job gets end_grace_s to come back as queued (requeue).
PASSING = {"COMPLETING"}
LIVE = QUEUED | RUNNING | PASSING
GONE = "GONE"
TRANSIENT = re.compile(r"unable to contact|timed out|temporarily unavailable|zero bytes|connection refused|"
                       r"communication|try again", re.IGNORECASE)
SLOT_VARS = ("SPEEDRUNNER_SLOT", "SPEEDRUNNER_CPUS", "CUDA_VISIBLE_DEVICES")  # the controller no longer knows the job (and there is no accounting to ask)

# The in-job executor's settings: the LocalExecutor fields that the slurm config shares with executor=local.
LOCAL_KEYS = ("timeout_s", "threads", "max_log_bytes", "memory_limit_mb", "network", "sandbox", "cpu_tolerance",
              "cpus")


def _submitit():
    try:
        import submitit
    except ImportError:
        raise UserError("executor=slurm needs submitit: pip install 'speedrunner[slurm]' "
                        "(submitit and hydra-submitit-launcher, pinned in pyproject.toml)") from None
    return submitit


# ---------------------------------------------------------------------------------------------- Slurm


def slurm_state(job_id: str) -> tuple[str | None, int]:
    """(state, restarts) of a job: ``RUNNING``, ``PENDING``, ``COMPLETED``, ...; ``GONE`` when the controller
    does not know it and no accounting does either; None when Slurm could not be asked (try again later)."""
    try:
        r = subprocess.run(["scontrol", "show", "job", "-o", str(job_id)], capture_output=True, text=True,
                           timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None, 0
    if r.returncode == 0:
        state = re.search(r"\bJobState=(\S+)", r.stdout)
        restarts = re.search(r"\bRestarts=(\d+)", r.stdout)
        if state:
            return state.group(1).upper(), int(restarts.group(1)) if restarts else 0
    if "invalid job id" not in (r.stderr + r.stdout).lower():
        return None, 0
    try:  # gone from the controller: accounting may still know how it ended
        a = subprocess.run(["sacct", "-n", "-X", "-P", "-o", "State", "-j", str(job_id)], capture_output=True,
                           text=True, timeout=30)
        if a.returncode == 0 and a.stdout.strip():
            return a.stdout.strip().splitlines()[0].split()[0].upper(), 0
    except (OSError, subprocess.TimeoutExpired):
        pass
    return GONE, 0


def scancel(job_id: str) -> bool:
    try:
        return subprocess.run(["scancel", str(job_id)], capture_output=True, timeout=60).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


# ------------------------------------------------------------------------------------------- the job


@dataclass
class NodeJob:
    """What one Slurm job runs: the node's command under a LocalExecutor (and torchrun), on the compute
    node. Picklable; submitit calls it (once per Slurm task, i.e. once per node of the allocation)."""

    command: list[str]
    cwd: str
    out_dir: str
    timeout_s: float
    env: dict[str, str]
    hidden: list[str]
    local: dict[str, Any]
    torchrun: dict[str, Any] | None = None

    def fingerprint(self) -> str:
        """Identifies "the same node run": what a resumed runner compares before re-attaching. The device
        pool's slot variables are left out (a resumed runner may hand the node another slot)."""
        d = asdict(self)
        d["env"] = {k: v for k, v in self.env.items() if k not in SLOT_VARS}
        return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def __call__(self) -> dict[str, Any]:
        submitit = _submitit()
        stopping: list[float] = []

        def on_term(signum, frame):  # requeue or cancel: Slurm kills the whole job after KillWait
            stopping.append(time.time())

        signal.signal(signal.SIGTERM, on_term)
        jenv = submitit.JobEnvironment()
        out_dir = Path(self.out_dir)
        local = dict(self.local)
        spec = TorchrunSpec(**self.torchrun) if self.torchrun else None
        if spec is not None and spec.nnodes > 1:
            spec = replace(spec, node_rank=jenv.node, rdzv_id=spec.rdzv_id or str(jenv.job_id),
                           rdzv_endpoint=spec.rdzv_endpoint or f"{jenv.hostnames[0]}:{spec.rdzv_port}")
            local["network"] = True  # the rendezvous and the collectives cross nodes
            if jenv.node > 0:
                out_dir = out_dir / f"node_{jenv.node}"
        restart = int(os.environ.get("SLURM_RESTART_COUNT") or 0)
        out_dir.mkdir(parents=True, exist_ok=True)
        if restart:
            for name in ("stdout.log", "stderr.log"):
                p = out_dir / name
                if p.exists():
                    p.rename(out_dir / name.replace(".log", f".attempt{restart - 1}.log"))
        with open(out_dir / ATTEMPTS_FILE, "a") as f:
            f.write(json.dumps({"job_id": str(jenv.job_id), "restart": restart, "host": socket.gethostname(),
                                "node": jenv.node, "started": round(time.time(), 3)}) + "\n")
        executor: Any = LocalExecutor(**local)
        if spec is not None:
            executor = TorchrunExecutor(executor, spec)
        res = executor.run(list(self.command), cwd=Path(self.cwd), out_dir=out_dir, timeout_s=self.timeout_s,
                           env=dict(self.env), hidden=[Path(h) for h in self.hidden])
        while stopping:  # being requeued or cancelled: leave no result behind, wait for the kill
            time.sleep(1)
        return asdict(res)

    def checkpoint(self, *args: Any, **kwargs: Any):
        """submitit's preemption hook (USR2): requeue the same node; it starts over in the next run."""
        return _submitit().helpers.DelayedSubmission(self, *args, **kwargs)


# -------------------------------------------------------------------------------------- the executor


@dataclass
class SlurmExecutor:
    # how the node runs inside its job: the same meaning as under executor=local
    timeout_s: float | None = None  # replaces the task's timeout when set
    threads: int = 1
    max_log_bytes: int = 64 * 1024 * 1024
    memory_limit_mb: float | None = None
    network: bool = False
    sandbox: str = "auto"
    cpu_tolerance: float = 1.5
    cpus: list[int] | None = None
    # the job (sbatch); None: leave it to the site's defaults
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    time_min: int | None = None  # the job's time limit; None: timeout + cancel_grace_s + time_margin_min
    time_margin_min: int = 5
    gpus_per_node: int | None = None
    cpus_per_task: int | None = None  # None: threads x processes per node
    mem_gb: float | None = None
    sbatch: dict[str, Any] = field(default_factory=dict)  # any other #SBATCH --key=value (reservation, constraint, ...)
    setup: list[str] = field(default_factory=list)  # shell lines run in the job before the node (module load ...)
    srun_args: list[str] = field(default_factory=list)
    job_name: str = "speedrunner"
    folder: str | Path | None = None  # jobs.jsonl and submitit's files; None: OUT_DIR/../.slurm
    python: str | None = None  # the python command on the compute nodes; None: this interpreter
    # the runner's side
    poll_s: float = 2.0
    cancel_grace_s: float = 60.0  # scancel a job still running this long after the node's timeout
    end_grace_s: float = 15.0  # how long an ended job may take to show its result file (shared filesystems)
    max_requeues: int = 3  # submitit's requeues on its time-out signal
    signal_delay_s: int = 90  # submitit's USR2, this long before the time limit
    submit_retries: int = 3
    torchrun: TorchrunSpec | None = None
    on_event: Callable[..., None] | None = None
    notes: list[str] = field(default_factory=list)

    # ------------------------------------------------------------------ public
    def run(self, command: list[str], cwd, out_dir, timeout_s: float, env: dict[str, str] | None = None,
            hidden=None) -> ExecResult:
        timeout = float(self.timeout_s or timeout_s)
        out_dir = Path(out_dir).resolve()
        out_dir.mkdir(parents=True, exist_ok=True)
        # the job's GPUs are Slurm's (--gpus-per-node): a device-pool slot of the runner's machine means nothing there
        env = {str(k): str(v) for k, v in (env or {}).items() if k != "CUDA_VISIBLE_DEVICES"}
        job = NodeJob(command=[str(c) for c in command], cwd=str(Path(cwd).resolve()), out_dir=str(out_dir),
                      timeout_s=timeout, env=env,
                      hidden=[str(h) for h in hidden or []], local=self._local_settings(),
                      torchrun=self.torchrun.to_dict() if self.torchrun else None)
        fp = job.fingerprint()
        rec = self._reattachable(out_dir, fp)
        if rec is not None:
            self._emit("slurm_reattached", out_dir, job_id=rec["job_id"], state=rec.get("_state"))
        else:
            self._cancel_stale(out_dir)
            rec = self._submit(job, out_dir, fp, timeout)
        return self._wait(rec, out_dir, timeout)

    def pending_job(self, out_dir: Path) -> str | None:
        """The id of the job recorded in ``out_dir`` whose result has not been taken yet, when it is still
        queued or running or has left its result file; None otherwise. A resumed loop can use it to keep an
        interrupted node (and run it again, which re-attaches) instead of discarding it."""
        try:
            rec = json.loads((Path(out_dir) / JOB_FILE).read_text())
        except (OSError, json.JSONDecodeError):
            return None
        if rec.get("consumed"):
            return None
        if all(p.exists() for p in _result_paths(rec)):
            return str(rec["job_id"])
        state, _ = slurm_state(rec["job_id"])
        return str(rec["job_id"]) if state is None or state in LIVE else None

    def sbatch_parameters(self, timeout_s: float) -> dict[str, Any]:
        """submitit's SlurmExecutor parameters for a node with this timeout (every value from the config)."""
        spec = self.torchrun
        nproc = spec.nproc_per_node if spec else 1
        params: dict[str, Any] = {
            "job_name": self.job_name,
            "time": int(self.time_min) if self.time_min else
            int(math.ceil((timeout_s + self.cancel_grace_s) / 60.0)) + int(self.time_margin_min),
            "nodes": spec.nnodes if spec else 1,
            "ntasks_per_node": 1,  # one launcher (LocalExecutor, torchrun) per node
            "cpus_per_task": int(self.cpus_per_task or int(self.threads) * nproc),
            "signal_delay_s": int(self.signal_delay_s),
        }
        for key in ("partition", "account", "qos", "gpus_per_node"):
            if getattr(self, key) is not None:
                params[key] = getattr(self, key)
        if self.mem_gb is not None:
            gb = float(self.mem_gb)
            params["mem"] = f"{int(gb)}GB" if gb == int(gb) else f"{int(round(gb * 1024))}MB"
        if self.setup:
            params["setup"] = [str(s) for s in self.setup]
        if self.srun_args:
            params["srun_args"] = [str(s) for s in self.srun_args]
        if self.sbatch:
            params["additional_parameters"] = {str(k).replace("_", "-"): v for k, v in dict(self.sbatch).items()}
        return params

    # ------------------------------------------------------------------ inside
    def _local_settings(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in LOCAL_KEYS}
        d["timeout_s"] = None  # the node's timeout is passed with each run
        d["cpus"] = list(self.cpus) if self.cpus else None
        return d

    def _folder(self, out_dir: Path) -> Path:
        return Path(self.folder).resolve() if self.folder else out_dir.parent / ".slurm"

    def _emit(self, event: str, out_dir: Path, **kw: Any) -> None:
        if self.on_event is not None:
            try:
                self.on_event(event, out_dir=out_dir, **kw)
            except Exception:  # the journal is a record, never a reason to lose a job
                pass

    def _registry(self, out_dir: Path) -> list[dict[str, Any]]:
        path = self._folder(out_dir) / "jobs.jsonl"
        if not path.is_file():
            return []
        out = []
        for line in path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return out

    def _reattachable(self, out_dir: Path, fp: str) -> dict[str, Any] | None:
        try:
            rec = json.loads((out_dir / JOB_FILE).read_text())
        except (OSError, json.JSONDecodeError):
            return None
        if rec.get("consumed") or rec.get("fingerprint") != fp:
            return None
        if all(p.exists() for p in _result_paths(rec)):
            rec["_state"] = "FINISHED"
            return rec
        state, _ = slurm_state(rec["job_id"])
        if state is None or state in LIVE:  # None: Slurm did not answer; the wait loop asks again
            rec["_state"] = state
            return rec
        return None

    def _cancel_stale(self, out_dir: Path) -> None:
        """Jobs submitted for this node folder earlier that are still alive belong to another version of
        the node (the loop made it again): cancel them so they do not run for nothing."""
        for rec in self._registry(out_dir):
            if rec.get("out_dir") != str(out_dir):
                continue
            state, _ = slurm_state(rec["job_id"])
            if state in LIVE and scancel(rec["job_id"]):
                self._emit("slurm_cancelled", out_dir, job_id=rec["job_id"],
                           reason="superseded: the node is being run again with other files or settings")

    def _submit(self, job: NodeJob, out_dir: Path, fp: str, timeout: float) -> dict[str, Any]:
        submitit = _submitit()
        folder = self._folder(out_dir)
        folder.mkdir(parents=True, exist_ok=True)
        jobs_folder = folder / "jobs" / "%j"
        params = self.sbatch_parameters(timeout)
        ex = submitit.SlurmExecutor(folder=str(jobs_folder), max_num_timeout=int(self.max_requeues),
                                    python=self.python)
        try:
            ex.update_parameters(**params)
        except ValueError as e:
            raise UserError(f"executor=slurm: {e}") from None
        attempt = 0
        while True:
            try:
                sjob = ex.submit(job)
                break
            except Exception as e:  # sbatch refused the job (settings) or the controller is unreachable
                attempt += 1
                text = str(e).strip()
                if attempt >= max(1, int(self.submit_retries)) or not TRANSIENT.search(text):
                    raise UserError(f"executor=slurm: sbatch failed for {out_dir} (check the executor's "
                                    f"partition/account/qos/...): {text[-800:]}") from None
                time.sleep(min(5.0 * attempt, 15.0))
        ntasks = int(params["nodes"]) * int(params["ntasks_per_node"])
        rec = {"job_id": str(sjob.job_id), "folder": str(jobs_folder), "ntasks": ntasks, "fingerprint": fp,
               "submitted": round(time.time(), 3), "out_dir": str(out_dir), "sbatch": params,
               "submission_file": str(sjob.paths.submission_file), "log": str(sjob.paths.stdout)}
        with open(folder / "jobs.jsonl", "a") as f:  # first: every job a node folder names is in the registry
            f.write(json.dumps({k: rec[k] for k in ("job_id", "out_dir", "fingerprint", "submitted")}) + "\n")
            f.flush()
            os.fsync(f.fileno())
        _write_json(out_dir / JOB_FILE, rec)
        self._emit("slurm_submitted", out_dir, job_id=rec["job_id"],
                   **{k: params[k] for k in ("partition", "time", "nodes", "cpus_per_task", "gpus_per_node")
                      if k in params})
        return rec

    def _wait(self, rec: dict[str, Any], out_dir: Path, timeout: float) -> ExecResult:
        job_id = rec["job_id"]
        results = _result_paths(rec)
        running_since: float | None = None
        restarts_seen: int | None = None
        ended: tuple[float, str] | None = None
        while True:
            if all(p.exists() for p in results):
                return self._collect(rec, out_dir, results)
            state, restarts = slurm_state(job_id)
            now = time.monotonic()
            if state is not None and state != GONE:
                if restarts_seen is not None and restarts != restarts_seen:  # requeued: the node starts over
                    self._emit("slurm_requeued", out_dir, job_id=job_id, restarts=restarts)
                    running_since = None
                restarts_seen = restarts
            if state in RUNNING:
                running_since = running_since or now
                ended = None
            elif state in QUEUED:
                running_since, ended = None, None  # the timeout counts only while the node runs
            elif state in PASSING or state is None:
                pass
            else:  # over (COMPLETED, FAILED, CANCELLED, TIMEOUT, NODE_FAIL, OUT_OF_MEMORY, ...) or gone
                ended = ended or (now, state)
                if now - ended[0] > self.end_grace_s:
                    return self._no_result(rec, out_dir, ended[1])
            if running_since is not None and now - running_since > timeout + self.cancel_grace_s:
                scancel(job_id)
                self._emit("slurm_cancelled", out_dir, job_id=job_id, reason=f"timed out after {timeout:g} s")
                _consume(out_dir)
                return ExecResult(exit_code=None, wall_s=now - running_since, timed_out=True,
                                  killed_reason=f"timed out after {timeout:g} s (Slurm job {job_id} cancelled)",
                                  stdout_path=str(out_dir / "stdout.log"), stderr_path=str(out_dir / "stderr.log"))
            time.sleep(self.poll_s)

    def _collect(self, rec: dict[str, Any], out_dir: Path, results: list[Path]) -> ExecResult:
        submitit = _submitit()
        try:
            outcome, value = submitit.core.utils.pickle_load(results[0])
        except Exception as e:  # a result file cut short
            outcome, value = "error", f"unreadable result file {results[0]}: {e}"
        _consume(out_dir)
        if outcome == "success" and isinstance(value, dict):
            known = {f.name for f in fields(ExecResult)}
            return ExecResult(**{k: v for k, v in value.items() if k in known})
        err = out_dir / "slurm_error.log"
        err.write_text(str(value))
        last = str(value).strip().splitlines()[-1] if str(value).strip() else "no traceback"
        return ExecResult(exit_code=None, wall_s=0.0, killed_reason=f"Slurm job {rec['job_id']} failed: {last}",
                          stdout_path=str(out_dir / "stdout.log"), stderr_path=str(err))

    def _no_result(self, rec: dict[str, Any], out_dir: Path, state: str) -> ExecResult:
        _consume(out_dir)
        stderr = out_dir / "stderr.log"
        log = Path(rec.get("log", "")).with_suffix(".err") if rec.get("log") else None
        if not stderr.is_file() and log is not None and log.is_file():
            stderr = log
        what = "is no longer known to Slurm" if state == GONE else f"ended {state}"
        return ExecResult(exit_code=None, wall_s=0.0,
                          killed_reason=f"Slurm job {rec['job_id']} {what} without a result (submitit's log: {log})",
                          stdout_path=str(out_dir / "stdout.log"), stderr_path=str(stderr))


def _result_paths(rec: dict[str, Any]) -> list[Path]:
    from_folder = str(rec["folder"])

    def path(task: int) -> Path:  # submitit's JobPaths(folder, job_id, task_id).result_pickle, without submitit
        job_id = str(rec["job_id"])
        folder = from_folder.replace("%j", job_id)
        array_id, *index = job_id.split("_", 1)
        folder = folder.replace("%A", array_id).replace("%a", index[0] if index else "")
        return Path(folder) / f"{job_id}_{task}_result.pkl"

    return [path(t) for t in range(int(rec.get("ntasks", 1)))]


def _consume(out_dir: Path) -> None:
    """The job's result has been taken: a later run of the same node folder submits a new job."""
    p = out_dir / JOB_FILE
    try:
        rec = json.loads(p.read_text())
    except (OSError, json.JSONDecodeError):
        return
    rec["consumed"] = round(time.time(), 3)
    _write_json(p, rec)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str) + "\n")
    os.replace(tmp, path)
