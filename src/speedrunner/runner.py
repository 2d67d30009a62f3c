"""Build a run from a composed config: the only place that knows every layer.

``compose(overrides)`` gives the resolved config (Hydra, from the package's ``conf/``);
``build(cfg, run_dir)`` turns it into a :class:`SearchRun`; ``config_hash`` identifies a run so that a
resume can prove it is the same run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import itertools
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

import yaml
from hydra import compose as hydra_compose
from hydra import initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, OmegaConf

from speedrunner.agents.coders import CODERS
from speedrunner.agents.ideators import IDEATORS
from speedrunner.agents.prompts import system_prompt
from speedrunner.core.errors import ConfigMismatch, UserError
from speedrunner.core.registry import resolve
from speedrunner.execution.envs import EnvExecutor, EnvSpec, envs_root
from speedrunner.execution.local import LocalExecutor
from speedrunner.execution.pool import DevicePool
from speedrunner.execution.torchrun import TorchrunExecutor, TorchrunSpec
from speedrunner.llm.cache import ResponseCache
from speedrunner.llm.factory import build_role_models
from speedrunner.llm.ledger import Ledger
from speedrunner.scoring.fsr import MAX_DRIFT, fsr_for_run
from speedrunner.scoring.reeval import reeval_for_run
from speedrunner.scoring.repro import repro_for_run
from speedrunner.search.loop import Budget, Progress, SearchRun
from speedrunner.search.policy import GreedyPolicy
from speedrunner.tasks.knowledge import format_hints, select_hints
from speedrunner.tasks.registry import get_task
from speedrunner.tasks.spec import Task
from speedrunner.workspace.fsutil import atomic_write_text, sha256_file

# Keys left out of the config hash: where the run lives and how much it may still spend can change
# on resume; everything that shapes the search cannot.
UNHASHED = ("run_dir", "budget")


GROUPS = ("task", "model", "scaffold", "coder", "ideator", "executor")


def _quote_group_names(overrides: list[str]) -> list[str]:
    """``model=null`` names the null model's config; Hydra's grammar would read it as None."""
    out = []
    for o in overrides:
        key, eq, value = o.partition("=")
        out.append(f"{key}='null'" if eq and key in GROUPS and value == "null" else o)
    return out


def compose(overrides: list[str] | tuple[str, ...] = ()) -> DictConfig:
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="speedrunner.conf", version_base="1.3"):
        cfg = hydra_compose(config_name="config", overrides=_quote_group_names(list(overrides)))
    OmegaConf.resolve(cfg)
    return cfg


def expand_grid(overrides: list[str]) -> list[list[str]]:
    """Hydra multirun semantics: every sweep override (``a=1,2``, ``hints=[],[1]``) multiplies the runs;
    returns one override list per run, in the order Hydra's basic sweeper would run them."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(_quote_group_names(list(overrides)))
    axes: list[list[str]] = []
    for o in parsed:
        if o.is_sweep_override():
            key = o.key_or_group
            axes.append([f"{key}={v}" for v in o.sweep_string_iterator()])
        else:
            axes.append([o.input_line])
    return [list(combo) for combo in itertools.product(*axes)]


def config_hash(cfg: DictConfig | dict[str, Any]) -> str:
    data = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    data = {k: v for k, v in data.items() if k not in UNHASHED}
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def default_run_dir(cfg: DictConfig) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")

    def clean(x: object) -> str:
        return re.sub(r"[^A-Za-z0-9_.-]+", "-", str(x)).strip("-")

    return Path("runs") / f"{stamp}_{clean(cfg.task.id)}_{clean(cfg.model.name)}_{clean(cfg.scaffold.name)}_s{cfg.seed}"



def prepare_data(name: str) -> Path:
    try:
        mod = importlib.import_module(f"speedrunner.data.{name}")
    except ImportError:
        raise UserError(f"the task needs data set {name!r}, which speedrunner does not know") from None
    return Path(mod.prepare())


def load_task_from(cfg: DictConfig) -> Task:
    task = get_task(str(cfg.task.id), cfg.task.get("size"), list(cfg.task_paths))
    if task.data:
        data_dir = prepare_data(task.data)
        task = get_task(str(cfg.task.id), cfg.task.get("size"), list(cfg.task_paths), data_dir=data_dir)
    if cfg.task.get("root_from"):  # a cascade step: v_0 is this folder's code, the rules stay the task's
        task = with_root(task, Path(str(cfg.task.root_from)))
    return task


def with_root(task: Task, folder: Path) -> Task:
    """The task with its starting code (v_0) taken from ``folder``: every file there, nothing else changes
    (command, metric, validity conditions, protected, hidden, reference and hints stay the task's)."""
    import dataclasses
    import glob

    folder = folder.expanduser().resolve()
    if not folder.is_dir():
        raise UserError(f"task.root_from: {folder} is not a folder")
    # the folder's files by name (escaped), after the task's own globs, which other readers still use
    names = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    return dataclasses.replace(task, template_dir=folder,
                               template_include=[*task.template_include, *(glob.escape(n) for n in names)])


def build(cfg: DictConfig, run_dir: Path, progress: Progress | None = None,
          replay_from: Path | None = None) -> SearchRun:
    """``replay_from``: a finished run to replay into ``run_dir``: models answer from its response cache
    (strictly: a miss is an error) and every node's execution is the recorded one."""
    task = load_task_from(cfg)
    coder_cls = resolve("coder", cfg.coder, CODERS)
    ideator_cls = resolve("ideator", cfg.ideator, IDEATORS)
    budget = cfg.budget
    try:
        ledger = Ledger.from_caps(budget)  # the loop adds earlier sessions' wall time on resume
    except ValueError as e:
        raise UserError(str(e)) from None
    run_dir.mkdir(parents=True, exist_ok=True)
    if replay_from is not None:  # answer from the original run's cache only: no network, no key
        cache = ResponseCache(Path(replay_from) / "llm_cache.sqlite", readonly=True)
        models = build_role_models(cfg, task, coder_cls, cache=cache, replay=True)
    else:
        cache = ResponseCache(run_dir / "llm_cache.sqlite")
        models = build_role_models(cfg, task, coder_cls, cache=cache, ledger=ledger)
    raw_levels = yaml.safe_load(cfg.hints) if isinstance(cfg.hints, str) else cfg.hints  # hints='[1]' quoted
    try:
        levels = [int(x) for x in (raw_levels or [])]
    except (TypeError, ValueError):
        raise UserError(f"hints: expected a list of levels such as [1] or [1,2,3], got {cfg.hints!r}") from None
    reference = (task.template_dir, task.reference_dir, task.editable) if task.reference_dir else None
    hints = select_hints(task.hints_dir, levels, [str(g) for g in cfg.knowledge_src_paths], reference)
    sc = cfg.scaffold
    try:
        policy = GreedyPolicy(n_initial=int(sc.n_initial), n_branch=int(sc.n_branch),
                              debug_prob=float(sc.debug_prob), max_bug_depth=int(sc.max_bug_depth),
                              seed=int(cfg.seed), direction=task.metric.direction)
    except ValueError as e:
        raise UserError(str(e)) from None
    coder_kwargs = _class_kwargs(cfg.coder, loop_keys=("max_retries",))
    ideator_kwargs = _class_kwargs(cfg.ideator)
    executor = make_executor(cfg.executor, task, run_dir)
    if int(cfg.budget.max_nodes) < 0:
        raise UserError("budget.max_nodes must be 0 or more")
    if not isinstance(cfg.get("reuse_identical", True), bool):
        raise UserError(f"reuse_identical must be true or false, got {cfg.reuse_identical!r}")
    run = SearchRun(
        run_dir=run_dir, task=task, policy=policy, coder=coder_cls(**coder_kwargs),
        ideator=ideator_cls(**ideator_kwargs),
        models=models, system_prompt=system_prompt(task), executor=executor,
        budget=Budget(max_nodes=int(cfg.budget.max_nodes)), ledger=ledger, cache=cache,
        info={"scaffold": str(sc.name), "model": str(cfg.model.name), "coder": str(cfg.coder.name),
              "ideator": str(cfg.ideator.name), "hints": levels, "budget_caps": ledger.caps(), "seed": int(cfg.seed),
              "config_hash": config_hash(cfg)},
        hints_text=format_hints(hints), coder_retries=int(cfg.coder.get("max_retries", 2)),
        progress=progress or Progress(),
        summary_hooks=[reeval_for_run, fsr_for_run, repro_for_run],
        reeval_cfg=_reeval_cfg(cfg),
        analyst=bool(cfg.get("analyst", {}).get("enabled", False)),
        reuse_identical=cfg.get("reuse_identical", True),
        pool=DevicePool.from_config(cfg.executor),  # executor.workers/devices/gpus_per_node (parallel search)
    )
    connect_events(executor, journal_sink(run))
    return run


def _reeval_cfg(cfg: DictConfig) -> dict[str, Any]:
    """The config's ``reeval`` section, checked: a wrong type would otherwise surface only after the search."""
    out = OmegaConf.to_container(cfg.reeval, resolve=True) if "reeval" in cfg else {}
    for key in ("all_valid", "drift_reference"):
        if not isinstance(out.get(key, False), bool):
            raise UserError(f"reeval.{key} must be true or false, got {out[key]!r}")
    for key, lo in (("runs", 0), ("max_candidates", 1)):
        if key in out and (isinstance(out[key], bool) or not isinstance(out[key], int) or out[key] < lo):
            raise UserError(f"reeval.{key} must be a whole number >= {lo}, got {out[key]!r}")
    drift = out.get("max_drift", MAX_DRIFT)
    if isinstance(drift, bool) or not isinstance(drift, (int, float)) or not 0 <= drift < 1:
        raise UserError(f"reeval.max_drift must be a fraction in [0, 1) such as 0.25, got {drift!r}")
    return out


def make_executor(section: DictConfig | dict[str, Any], task: Task, run_dir: Path | None = None) -> Any:
    """The executor a config's ``executor`` section and a task ask for, innermost first:
    ``LocalExecutor`` (executor=local) or ``SlurmExecutor`` (executor=slurm, which runs a LocalExecutor in
    each job); torchrun around the local one when the task declares ``nproc_per_node``/``nnodes`` (under
    Slurm, inside the job); the task's own Python environment around everything when its
    ``requirements`` list pip packages (built on this machine, before any job is submitted)."""
    ex = OmegaConf.to_container(section, resolve=True) if isinstance(section, DictConfig) else dict(section)
    assert isinstance(ex, dict)
    name = str(ex.get("name", "local"))
    local = dict(timeout_s=ex.get("timeout_s"), threads=int(ex.get("threads", 1)),
                 max_log_bytes=int(ex.get("max_log_bytes", 64 << 20)), memory_limit_mb=ex.get("memory_limit_mb"),
                 network=bool(ex.get("network", False)), cpu_tolerance=float(ex.get("cpu_tolerance", 1.5)),
                 cpus=list(ex["cpus"]) if ex.get("cpus") else None, sandbox=str(ex.get("sandbox", "auto")))
    tr = ex.get("torchrun") or {}
    spec = None
    if task.distributed:
        try:
            spec = TorchrunSpec(nproc_per_node=int(tr.get("nproc_per_node") or task.nproc_per_node or 1),
                                nnodes=int(tr.get("nnodes") or task.nnodes),
                                rdzv_backend=str(tr.get("rdzv_backend") or "c10d"), rdzv_endpoint=tr.get("rdzv_endpoint"),
                                rdzv_port=int(tr.get("rdzv_port") or 29500), rdzv_id=tr.get("rdzv_id"),
                                node_rank=tr.get("node_rank"), max_restarts=int(tr.get("max_restarts") or 0),
                                extra_args=list(tr.get("extra_args") or []))
        except ValueError as e:
            raise UserError(str(e)) from None
    executor: Any
    if name == "slurm":
        from speedrunner.execution.slurm import SlurmExecutor

        keys = {f.name for f in dataclasses.fields(SlurmExecutor)} - set(local) - {"torchrun", "on_event", "notes"}
        slurm = {k: v for k, v in ex.items() if k in keys and v is not None}
        if not slurm.get("folder") and run_dir is not None:
            slurm["folder"] = str(Path(run_dir).resolve() / "slurm")
        executor = SlurmExecutor(**local, **slurm, torchrun=spec)
    elif name == "local":
        executor = LocalExecutor(**local)
        if spec is not None:
            if spec.nnodes > 1 and not spec.rdzv_endpoint:
                raise UserError(f"task {task.id} runs on {spec.nnodes} nodes: executor=local needs "
                                "executor.torchrun.rdzv_endpoint=HOST:PORT (and the same launch on every node); "
                                "executor=slurm finds the nodes itself")
            executor = TorchrunExecutor(executor, spec)
    else:
        raise UserError(f"executor {name!r}: speedrunner knows 'local' and 'slurm'")
    env_spec = EnvSpec.from_requirements(task.requirements)
    if env_spec is not None:
        executor = EnvExecutor(executor, env_spec, envs_root(ex.get("envs_dir")),
                               build_timeout_s=float(ex.get("env_build_timeout_s") or 1800))
    return executor


def connect_events(executor: Any, sink: Any) -> None:
    """Give every layer of an executor chain that reports events (``on_event``) the sink."""
    layer = executor
    while layer is not None:
        if dataclasses.is_dataclass(layer) and "on_event" in {f.name for f in dataclasses.fields(layer)}:
            layer.on_event = sink
        layer = layer.__dict__.get("inner") if hasattr(layer, "__dict__") else None


def journal_sink(run: SearchRun) -> Any:
    """Executor events (Slurm job ids, requeues, environment builds) as journal events, with the node id
    when the folder is a node's (``nodes/v_N``) and the folder relative to the run otherwise."""

    def sink(event: str, out_dir: Path | None = None, **fields: Any) -> None:
        node, where = None, None
        if out_dir is not None:
            p = Path(out_dir)
            m = re.fullmatch(r"v_(\d+)", p.name)
            if m and p.parent.name == "nodes":
                node = int(m.group(1))
            try:
                where = p.resolve().relative_to(Path(run.run_dir).resolve()).as_posix()
            except ValueError:
                where = str(p)
        write = getattr(run, "_log", None) or run.journal.write  # _log: under the loop's lock (workers)
        try:
            write(event, node=node, dir=where, **fields)
        except ValueError:  # the journal is closed (the run ended)
            pass

    return sink


def _class_kwargs(section: DictConfig, loop_keys: tuple[str, ...] = ()) -> dict[str, Any]:
    """Constructor arguments for a coder/ideator class: every key of its config section except the ones
    the harness reads itself (name, cls, and ``loop_keys``)."""
    data = OmegaConf.to_container(section, resolve=True)
    assert isinstance(data, dict)
    return {k: v for k, v in data.items() if k not in ("name", "cls", *loop_keys)}


def task_fingerprint(task: Task) -> str:
    """A hash of what the task gives the search: its resolved fields and its template and reference
    files. A resume whose task changed since the run started is refused."""
    h = hashlib.sha256()
    fields = {k: v for k, v in vars(task).items() if k not in ("parsers", "conditions", "extra")}
    # fields added after runs were made count only when set, so those runs keep their task hash
    for key, default in (("nproc_per_node", None), ("nnodes", 1)):
        if fields.get(key) == default:
            fields.pop(key, None)
    if not (task.requirements or {}).get("pip"):
        fields.pop("requirements", None)  # informative only (python, torch, ...)
    fields["parsers"] = [(p.pattern.pattern, p.match, p.source) for p in task.parsers]
    fields["conditions"] = [str(c) for c in task.conditions]
    fields["metric"] = task.metric.model_dump()
    h.update(json.dumps(fields, sort_keys=True, default=str).encode())
    for folder in (task.template_dir, task.reference_dir):
        if folder is None:
            continue
        for p in sorted(Path(folder).rglob("*")):
            if p.is_file() and "__pycache__" not in p.parts:
                h.update(p.relative_to(folder).as_posix().encode())
                h.update(sha256_file(p).encode())
    return h.hexdigest()[:16]


def check_task_unchanged(run_dir: Path, task: Task) -> None:
    want = _header_value(run_dir / "config.yaml", "task_hash")
    got = task_fingerprint(task)
    if want and want != got:
        raise ConfigMismatch(f"{run_dir}: the task {task.id} changed since the run started (task hash {got}, "
                             f"run started with {want}); its files or task.yaml were edited")


def save_config(cfg: DictConfig, run_dir: Path, overrides: list[str], task: Task | None = None) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    body = OmegaConf.to_yaml(cfg, resolve=True)
    task_hash = task_fingerprint(task) if task is not None else _header_value(run_dir / "config.yaml", "task_hash")
    head = (f"# speedrunner run configuration (resolved)\n# config_hash: {config_hash(cfg)}\n"
            f"# task_hash: {task_hash or ''}\n"
            f"# overrides: {json.dumps(overrides)}\n# python: {sys.version.split()[0]}\n")
    atomic_write_text(run_dir / "config.yaml", head + body)
    atomic_write_text(run_dir / "overrides.json", json.dumps(overrides) + "\n")


def load_run_config(run_dir: Path, extra: list[str]) -> tuple[DictConfig, list[str]]:
    """The config a run started with, plus resume overrides (only budget.* may change)."""
    cfg_path = run_dir / "config.yaml"
    if not cfg_path.is_file():
        raise UserError(f"{run_dir}: not a run folder (no config.yaml); give the folder a run was written to")
    for o in extra:
        key = o.lstrip("+~").split("=", 1)[0]
        if not key.startswith("budget."):
            raise UserError(f"resume: only budget.* may be changed when resuming, not {key!r}; "
                            "start a new run to change anything else")
    stored = OmegaConf.load(cfg_path)
    want = _header_value(cfg_path, "config_hash")
    cfg = OmegaConf.merge(stored, OmegaConf.from_dotlist([o.lstrip("+") for o in extra]))
    got = config_hash(cfg)
    if want and got != want:
        raise ConfigMismatch(f"{cfg_path}: config hash {got} does not match the run's {want}; "
                             "the file was edited after the run started")
    return cfg, extra


def _header_value(path: Path, key: str) -> str | None:
    if not path.is_file():
        return None
    for line in path.read_text().splitlines()[:8]:
        if line.startswith(f"# {key}:"):
            return line.split(":", 1)[1].strip() or None
    return None
