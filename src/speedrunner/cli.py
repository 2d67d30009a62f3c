"""The ``speedrunner`` command. Parses arguments, composes the config, hands objects to the loop.

User mistakes (config, task files, arguments) end with a one-paragraph message and exit status 2,
never a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from speedrunner import __version__
from speedrunner.core.errors import UserError
from speedrunner.core.types import Status
from speedrunner.report.progress import LiveProgress
from speedrunner.search.loop import ReplayMismatch

console = Console(highlight=False, soft_wrap=True)
err_console = Console(stderr=True, highlight=False, soft_wrap=True)

STATUS_STYLE = {Status.VALID: "green", Status.INVALID: "yellow", Status.BUGGY: "red"}


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.6g}"


def print_summary(run) -> None:
    s = json.loads((run.run_dir / "summary.json").read_text())
    table = Table(title=f"{s['task']}  ·  {s.get('model')}  ·  {s.get('scaffold')}  ·  seed {s.get('seed')}")
    for col in ("node", "from", "operator", "status", s["metric"], "reason"):
        table.add_column(col, overflow="fold")
    for nid in sorted(run.tree):
        n = run.tree[nid]
        o = n.outcome
        status = o.status.value if o else "-"
        style = STATUS_STYLE.get(o.status, "") if o else ""
        reason = (o.reason.strip().splitlines()[0][:60] if o and o.reason.strip() else "")
        mark = " *" if nid == s["best_node"] else ""
        table.add_row(f"v_{nid}{mark}", "-" if n.parent is None else f"v_{n.parent}", n.operator.value,
                      f"[{style}]{status}[/{style}]" if style else status, _fmt(o.metric if o else None),
                      escape(reason))
    console.print(table)
    speed = f"speedup {s['speedup']:.3f}x" if s.get("speedup") else ""
    best = f"best = {_fmt(s['best_metric'])} (v_{s['best_node']})" if s["best_node"] is not None else "no valid node"
    fsr = f"; FSR {s['fsr']:.3f} ({s['fsr_source']})" if s.get("fsr") is not None else ""
    if fsr and s.get("drift") is not None:  # record R beside the node ran this much off its calibrated time
        fsr += f" [machine {s['drift']:+.1%} vs calibration, {'not ' if s.get('drift_note') else ''}corrected]"
    console.print(f"baseline {s['metric']} = {_fmt(s['baseline_metric'])}; {best} {speed}{fsr}; "
                  f"{s['n_valid']}/{s['n_nodes']} nodes valid; {s.get('llm_calls', 0)} model calls")
    console.print(f"run folder: {run.run_dir}  (summary.json, journal.jsonl, nodes/v_N/)")


def cmd_grid(args: argparse.Namespace) -> int:
    """``run -m``: one normal run folder per combination of the sweep overrides, all under one folder."""
    import re
    import time

    from speedrunner.launch import is_launcher_override
    from speedrunner.runner import expand_grid

    launcher = [o for o in args.overrides if is_launcher_override(o)]  # e.g. hydra/launcher=submitit_slurm
    overrides = [o for o in args.overrides if not o.startswith("run_dir=") and o not in launcher]
    base = next((o.split("=", 1)[1] for o in args.overrides if o.startswith("run_dir=")), None)
    grid_dir = Path(base) if base else Path("runs") / f"grid_{time.strftime('%Y%m%d-%H%M%S')}"
    combos = expand_grid(overrides)
    console.print(f"[bold]speedrunner[/bold] grid of {len(combos)} runs into {grid_dir}")
    failed, pending = 0, []
    for i, combo in enumerate(combos):
        swept = [c for c in combo if c not in args.overrides]
        slug = re.sub(r"[^A-Za-z0-9_.,-]+", "-", "_".join(swept) or "run").strip("-")[:120]
        run_dir = grid_dir / f"{i:03d}_{slug}"
        if (run_dir / "summary.json").exists() and json.loads((run_dir / "summary.json").read_text()).get(
                "status") == "finished":
            console.print(f"[dim]{run_dir.name}: finished before, skipped[/dim]")
            continue
        console.print(f"[bold]run {i + 1}/{len(combos)}[/bold]: {' '.join(swept)}", markup=True)
        if launcher:  # handed to the launcher below, all at once (a Slurm job array)
            pending.append((combo, run_dir))
            continue
        sub = argparse.Namespace(overrides=[*combo, f"run_dir={run_dir}"], cfg=False, config_dir=args.config_dir,
                                 multirun=False)
        try:
            if (run_dir / "journal.jsonl").exists():
                cmd_resume(argparse.Namespace(run_dir=str(run_dir), overrides=[]))
            else:
                cmd_run(sub)
        except UserError as e:
            failed += 1
            err_console.print(f"[red]run {i + 1} failed:[/red] {escape(str(e))}")
    if pending:
        from speedrunner.launch import launch_grid

        failed = sum(1 for code in launch_grid(pending, launcher, grid_dir, args.config_dir) if code)
    console.print(f"grid done: {len(combos) - failed}/{len(combos)} runs in {grid_dir}; "
                  f"next: speedrunner report {grid_dir}", markup=False)
    return 0 if not failed else 1


def cmd_run(args: argparse.Namespace) -> int:
    from speedrunner.runner import build, compose, default_run_dir, save_config

    if getattr(args, "multirun", False):
        return cmd_grid(args)
    overrides = list(args.overrides)
    if args.config_dir:
        path = Path(args.config_dir).expanduser().resolve()
        if not path.is_dir():
            raise UserError(f"--config-dir: {path} is not a folder")
        overrides.insert(0, f"hydra.searchpath=[file://{path}]")
    cfg = compose(overrides)
    if cfg.model.get("path") and cfg.model.path != "???":
        cfg.model.path = str(Path(str(cfg.model.path)).expanduser().resolve())
    if args.cfg:
        from omegaconf import OmegaConf

        console.print(OmegaConf.to_yaml(cfg), markup=False)
        return 0
    run_dir = Path(cfg.run_dir) if cfg.run_dir else default_run_dir(cfg)
    if (run_dir / "journal.jsonl").exists():
        raise UserError(f"{run_dir} already holds a run; use 'speedrunner resume {run_dir}' or another run_dir")
    run = build(cfg, run_dir)
    live = LiveProgress.for_run(run, console=console)
    run.on_started = lambda: save_config(cfg, run_dir, overrides, run.task)
    console.print(f"[bold]speedrunner[/bold] {run.task.id} · model {cfg.model.name} · scaffold {cfg.scaffold.name} "
                  f"· {run.budget.max_nodes} nodes · run folder {run_dir}")
    for note in run.executor.notes:
        console.print(f"[yellow]note:[/yellow] {escape(note)}")
    with live:
        run.run()
    print_summary(run)
    console.print(f"next: speedrunner view {run_dir}   (the search tree as one HTML page)", markup=False)
    return 0


def cmd_resume(args: argparse.Namespace) -> int:
    from speedrunner.runner import build, check_task_unchanged, load_run_config, save_config

    run_dir = Path(args.run_dir)
    cfg, extra = load_run_config(run_dir, list(args.overrides))
    run = build(cfg, run_dir)
    check_task_unchanged(run_dir, run.task)
    live = LiveProgress.for_run(run, console=console)
    if extra:
        all_overrides = json.loads((run_dir / "overrides.json").read_text()) + extra
        run.on_started = lambda: save_config(cfg, run_dir, all_overrides)
    console.print(f"[bold]speedrunner[/bold] resuming {run_dir}")
    with live:
        run.run()
    print_summary(run)
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    """Re-drive a finished run's search from its response cache and recorded results; compare the trees."""
    from omegaconf import OmegaConf

    from speedrunner.execution.recorded import RecordedExecutor, ReplayDivergence
    from speedrunner.runner import build, load_run_config

    src = Path(args.run_dir)
    cfg, _ = load_run_config(src, [])
    summary = json.loads((src / "summary.json").read_text()) if (src / "summary.json").is_file() else {}
    out = Path(args.out) if args.out else src.with_name(src.name + "_replay")
    if (out / "journal.jsonl").exists():
        raise UserError(f"{out} already holds a run; choose another --out")
    cfg = OmegaConf.merge(cfg, OmegaConf.create({"budget": {"max_nodes": int(summary.get("n_nodes", 0)),
                                                            "max_usd": None, "max_tokens": None,
                                                            "max_llm_calls": None, "max_wall_minutes": None},
                                                 "reeval": {"runs": 0}}))
    run = build(cfg, out, replay_from=src)
    run.executor = RecordedExecutor(src, threads=run.executor.threads)
    run.summary_hooks = []
    try:
        run.run()
    except ReplayDivergence as e:
        err_console.print(f"[red]replay diverged:[/red] {escape(str(e))}")
        return 1
    from speedrunner.workspace.store import NodeStore

    def shape(d: Path):
        return {n.id: (n.parent, n.operator.value, tuple(sorted((k, v.get("sha256")) for k, v in n.files.items())))
                for n in NodeStore(d).load_all().values()}

    a, b = shape(src), shape(out)
    if a != b:
        diff = sorted(set(a) ^ set(b)) or [k for k in a if a[k] != b.get(k)]
        err_console.print(f"[red]the replay reached a different tree[/red]; nodes that differ: {diff[:20]}")
        return 1
    console.print(f"replay of {src} reached the same tree ({len(b)} nodes) with no model call outside the cache; "
                  f"written to {out}", markup=False)
    return 0


def cmd_tasks(args: argparse.Namespace) -> int:
    from speedrunner.tasks.registry import list_tasks
    from speedrunner.tasks.spec import read_spec

    table = Table(title="tasks")
    for col in ("id", "metric", "sizes", "description"):
        table.add_column(col, overflow="fold")
    rows: list[tuple[str, str, str, str]] = []
    for tid, path in list_tasks(args.task_paths).items():
        try:
            raw = read_spec(path)
            suites = {raw.get("suite")} | set((raw.get("vars") or {}).get("suites") or [])
            if args.suite and args.suite not in suites and not tid.startswith(f"{args.suite}/"):
                continue
            desc = str(raw.get("description", "")).strip().splitlines()[0][:70]
            metric = f"{raw.get('metric', {}).get('name', '?')} ({raw.get('metric', {}).get('direction', 'minimize')})"
            sizes = ",".join(raw.get("sizes", {}) or []) or "-"
        except UserError as e:
            desc, metric, sizes = f"error: {e}", "?", "?"
        rows.append((tid, metric, sizes, desc))
    if not console.is_terminal:  # piped: one plain line per task, easy to grep and script
        for row in rows:
            print("\t".join(row))
        return 0
    for row in rows:
        table.add_row(*row)
    console.print(table)
    return 0


def cmd_data(args: argparse.Namespace) -> int:
    import importlib

    try:
        mod = importlib.import_module(f"speedrunner.data.{args.name}")
    except ImportError:
        raise UserError(f"unknown data set {args.name!r}; known: nanogpt_mini, fineweb10B") from None
    if args.action == "prepare":
        kwargs: dict = {"force": args.force}
        if args.out:
            kwargs["out_dir"] = Path(args.out)
        if args.text:
            kwargs["text_file"] = Path(args.text)
        if args.shards is not None:
            kwargs["shards"] = args.shards
        path = mod.prepare(**kwargs)
    else:
        path = Path(args.out) if args.out else None
        counts = mod.check(path)
        path = path or mod.default_dir()
    console.print(f"{args.name}: {path}", markup=False)
    meta_file = Path(path) / "meta.json"
    if meta_file.is_file():
        meta = json.loads(meta_file.read_text())
        for key in ("vocab_size", "tokens"):
            if key in meta:
                console.print(f"  {key}: {meta[key]}", markup=False)
    else:
        counts = mod.check(path)
        console.print(f"  {len(counts)} shards, {sum(counts.values()):,} tokens", markup=False)
    return 0


def cmd_ladder(args: argparse.Namespace) -> int:
    from speedrunner.scoring import calibration as cal

    if args.action == "time":
        available = [int(r["record"]) for r in cal.ladder_records(args.suite)]
        records = cal.parse_records(args.records, available)
        cpus = [int(c) for c in args.cpus.split(",")] if args.cpus else None
        if args.runs < 1:
            raise UserError(f"--runs must be 1 or more, got {args.runs}")
        out = Path(args.out) if args.out else cal.calibration_path(args.suite, args.size, args.threads)
        partial = cal.partial_path(out)
        result = cal.time_ladder(args.suite, records, args.runs, args.size, args.threads,
                                 progress=lambda line: console.print(line, markup=False), cpus=cpus,
                                 partial=partial, resume=args.resume)
        path = cal.save_calibration(result, out)
        partial.unlink(missing_ok=True)
        console.print(cal.ladder_table(result), markup=False)
        for line in cal.drift_summary(result):
            console.print(line, markup=False)
        console.print(f"calibration written to {path}")
        return 0
    path = Path(args.calibration) if args.calibration else cal.calibration_path(args.suite, args.size, args.threads)
    if not path.is_file():
        raise UserError(f"no calibration at {path}; run 'speedrunner ladder time' first (or pass --calibration FILE)")
    data = cal.load_calibration(path)
    if args.action == "table":
        console.print(cal.ladder_table(data), markup=False)
        for line in cal.drift_summary(data):
            console.print(line, markup=False)
        return 0
    out = cal.plot_ladder(data, Path(args.out or "ladder.png"))
    console.print(f"plot written to {out}")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    """Re-evaluate any folder against a task; print a JSON verdict; exit 0 only if valid."""
    import tempfile

    from speedrunner.execution.local import LocalExecutor
    from speedrunner.runner import prepare_data
    from speedrunner.scoring.reeval import reevaluate
    from speedrunner.tasks.registry import get_task
    from speedrunner.workspace.store import SKIP_DIRS

    folder = Path(args.dir)
    if not folder.is_dir():
        raise UserError(f"{folder}: not a folder; give the folder holding the code to verify (e.g. nodes/v_3/workspace)")
    task = get_task(args.task, args.size, args.task_paths)
    if task.data:
        task = get_task(args.task, args.size, args.task_paths, data_dir=prepare_data(task.data))
    files = {p.relative_to(folder).as_posix(): p for p in sorted(folder.rglob("*"))
             if p.is_file() and not SKIP_DIRS.intersection(p.relative_to(folder).parts)}
    with tempfile.TemporaryDirectory(prefix="speedrunner-verify-") as tmp:
        verdict = reevaluate(task, files, Path(tmp), LocalExecutor(threads=args.threads), args.runs)
    out = {"task": task.id, "size": task.size, "dir": str(folder.resolve()), "valid": verdict["valid"],
           "reasons": verdict["reasons"], task.metric.name: verdict["metric_mean"],
           f"{task.metric.name}_std": verdict["metric_std"], "val_loss": verdict["val_loss"],
           "test_loss": verdict["test_loss"], "runs": args.runs}
    print(json.dumps(out, indent=2))
    return 0 if verdict["valid"] else 1


def cmd_import_records(args: argparse.Namespace) -> int:
    from speedrunner.tasks.upstream import import_records

    repo = Path(args.path)
    if not repo.exists():
        raise UserError(f"{repo}: no such folder; give a checkout of the upstream speedrun (modded-nanogpt)")
    report = import_records(repo, Path(args.out), Path(args.hints) if args.hints else None)
    console.print(report.summary(), markup=False)
    console.print(f"tasks written under {Path(args.out).resolve()}; run one with: speedrunner run "
                  f"task_paths=[{Path(args.out).resolve()}] task.id=nanogpt_speedrun/record_R ...", markup=False)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from speedrunner.report import write_report

    path = write_report([Path(p) for p in args.paths], Path(args.out), plots=not args.no_plots,
                        n_boot=args.bootstrap, seed=args.seed)
    console.print(f"report written to {path} (with CSV, JSON{'' if args.no_plots else ' and PNG plots'} beside it)",
                  markup=False)
    return 0


def cmd_view(args: argparse.Namespace) -> int:
    from speedrunner.report import write_viewer

    path = write_viewer(Path(args.run_dir), Path(args.out) if args.out else None)
    console.print(f"viewer written to {path}: open it in a browser (it needs no network)", markup=False)
    return 0


def cmd_cascade(args: argparse.Namespace) -> int:
    """A chain of runs up a ladder, each step starting from the previous step's best node (cascade.py)."""
    from speedrunner.cascade import Cascade, default_dir, load_spec, spec_from_args

    if args.resume:
        if args.overrides:
            raise UserError("cascade --resume DIR takes no other arguments: the cascade's own are in DIR/cascade.json")
        cascade_dir = Path(args.resume)
        spec = load_spec(cascade_dir)
    else:
        spec, run_dir = spec_from_args(list(args.overrides), args.config_dir)
        cascade_dir = Path(run_dir) if run_dir else default_dir(spec, args.config_dir)
    console.print(f"[bold]speedrunner[/bold] cascade {spec.suite} records {spec.first}-{spec.last}"
                  + (f" + {spec.beyond} beyond" if spec.beyond else "") + f" · folder {cascade_dir}")
    cascade = Cascade(spec, cascade_dir, config_dir=args.config_dir,
                      log=lambda line: console.print(line, markup=False),
                      progress=lambda run: LiveProgress.for_run(run, console=console))
    doc = cascade.run()
    for s in doc["steps"]:
        console.print(f"step {s['step']} ({s['mode']}, record {s['record']}): best v_{s['best_node']} "
                      f"{_fmt(s['metric'])} vs root {_fmt(s['root_metric'])}; speedup over record {spec.first} "
                      f"{_fmt(s.get('speedup_over_first'))} (reference {_fmt(s.get('speedup_over_first_record_ref'))})"
                      + (f"; stopped: {s['stopped_because']}" if s["stopped_because"] else ""), markup=False)
    claim = doc.get("claim") or {}
    if claim.get("made"):
        console.print(("beats" if claim["beats_last_record"] else "does not significantly beat")
                      + f" record {claim['last_record']} on this machine (p={_fmt(claim['p_faster'])}, "
                      f"{claim['runs']} runs each)", markup=False)
    console.print(f"cascade.json and {doc.get('plot') or 'no plot'} in {cascade_dir}; "
                  f"next: speedrunner report {cascade_dir}", markup=False)
    return 0


def cmd_setup(args: argparse.Namespace) -> int:
    """``setup aider``: aider's own virtual environment (it pins old litellm/openai/numpy)."""
    import time

    from speedrunner.agents.coders import aider

    venv = aider.resolve_venv(args.venv)
    if args.check:
        problem = aider.venv_problem(venv)
        console.print(f"aider {aider.AIDER_VERSION}: " + (f"ready in {venv}" if problem is None else f"not ready: {problem}"),
                      markup=False)
        return 0 if problem is None else 1
    t0 = time.monotonic()
    path, installed = aider.setup_venv(venv, python=args.python, force=args.force)
    how = f"installed in {time.monotonic() - t0:.0f} s" if installed else "already installed (--force reinstalls)"
    console.print(f"aider {aider.AIDER_VERSION} {how}: {path}", markup=False)
    console.print("use it with: speedrunner run coder=aider model=... (see docs/AIDER.md)", markup=False)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="speedrunner", description="LLM research agents on the NanoGPT speedrun.")
    p.add_argument("--version", action="version", version=f"speedrunner {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="run a search: speedrunner run task=collatz model=oracle scaffold=aide")
    r.add_argument("--cfg", action="store_true", help="print the resolved config and exit")
    r.add_argument("-m", "--multirun", action="store_true",
                   help="a grid: every a=x,y override multiplies the runs (run_dir= names the grid's folder)")
    r.add_argument("--config-dir", help="a folder of your own config files (e.g. coder/mine.yaml) searched too")
    r.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. scaffold=aide budget.max_nodes=8")
    r.set_defaults(func=cmd_run)

    s = sub.add_parser("resume", help="continue a run where it stopped: speedrunner resume RUN_DIR [budget.*=...]")
    s.add_argument("run_dir")
    s.add_argument("overrides", nargs="*", help="only budget.* may change, e.g. budget.max_nodes=30")
    s.set_defaults(func=cmd_resume)

    rpl = sub.add_parser("replay", help="re-run a finished run's search from its response cache (no network)")
    rpl.add_argument("run_dir")
    rpl.add_argument("--out", help="where to write the replay (default RUN_DIR_replay)")
    rpl.set_defaults(func=cmd_replay)

    t = sub.add_parser("tasks", help="list the tasks speedrunner knows")
    t.add_argument("--task-paths", nargs="*", default=[], help="extra folders to search for task.yaml files")
    t.add_argument("--suite", help="only this suite, e.g. nanogpt_mini, paper, track1, track2")
    t.set_defaults(func=cmd_tasks)

    v = sub.add_parser("verify", help="re-evaluate a folder against a task: speedrunner verify --task T DIR")
    v.add_argument("dir", help="the folder with the code (e.g. a node's workspace)")
    v.add_argument("--task", required=True, help="task id, e.g. nanogpt_mini/record_3")
    v.add_argument("--size", default=None, help="task size (default: the task's default)")
    v.add_argument("--runs", type=int, default=3, help="independent runs (default 3)")
    v.add_argument("--threads", type=int, default=1)
    v.add_argument("--task-paths", nargs="*", default=[], help="extra folders to search for task.yaml files")
    v.set_defaults(func=cmd_verify)

    rp = sub.add_parser("report", help="aggregate runs into tables and plots: speedrunner report RUN_DIR...")
    rp.add_argument("paths", nargs="+", help="run folders, or folders holding runs (searched recursively)")
    rp.add_argument("--out", default="report", help="output folder (default ./report)")
    rp.add_argument("--no-plots", action="store_true", help="tables only")
    rp.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples for the IQM intervals")
    rp.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    rp.set_defaults(func=cmd_report)

    vw = sub.add_parser("view", help="write the search tree as one self-contained HTML page")
    vw.add_argument("run_dir")
    vw.add_argument("--out", help="HTML file (default RUN_DIR/tree.html)")
    vw.set_defaults(func=cmd_view)

    im = sub.add_parser("import-records", help="turn a checkout of the upstream speedrun into tasks")
    im.add_argument("path", help="a local checkout (work tree or bare git dir) of modded-nanogpt")
    im.add_argument("--out", default="upstream_tasks", help="where to write the tasks (default ./upstream_tasks)")
    im.add_argument("--hints", help="an llm-speedrunner hint folder (record_R/level_L_<kind>.txt) to import")
    im.set_defaults(func=cmd_import_records)

    d = sub.add_parser("data", help="prepare or check a data set: speedrunner data prepare nanogpt_mini")
    d.add_argument("action", choices=["prepare", "check"])
    d.add_argument("name", help="data set name, e.g. nanogpt_mini")
    d.add_argument("--out", help="folder to write to / check (default: the cache)")
    d.add_argument("--text", help="prepare from your own UTF-8 text file instead of the built-in corpus")
    d.add_argument("--force", action="store_true", help="rebuild even if a valid cached copy exists")
    d.add_argument("--shards", type=int, help="fineweb10B: training shards to fetch (100M tokens each)")
    d.set_defaults(func=cmd_data)

    ld = sub.add_parser("ladder", help="calibrate a ladder on this machine: speedrunner ladder time --runs 3")
    ld.add_argument("action", choices=["time", "plot", "table"])
    ld.add_argument("--suite", default="nanogpt_mini")
    ld.add_argument("--records", default="all", help="e.g. 1-10, 3, 1,4,7 (default: all)")
    ld.add_argument("--runs", type=int, default=3, help="timed runs per record")
    ld.add_argument("--size", default="full", help="full, demo or smoke")
    ld.add_argument("--threads", type=int, default=1, help="threads per run (part of the machine fingerprint)")
    ld.add_argument("--cpus", help="time: pin the runs to these cores, e.g. 0 or 0,1 (quieter timings)")
    ld.add_argument("--out", help="time: calibration file (default: the cache, keyed by machine); plot: PNG path")
    ld.add_argument("--calibration", help="plot/table: a calibration file (default: this machine's)")
    ld.add_argument("--resume", action="store_true",
                    help="time: continue an interrupted calibration (its runs so far are kept in OUT.partial.json)")
    ld.set_defaults(func=cmd_ladder)

    cc = sub.add_parser("cascade", help="climb a ladder: speedrunner cascade suite=nanogpt_mini records=1-3 model=oracle")
    cc.add_argument("--resume", metavar="DIR", help="continue the cascade in DIR (its settings come from DIR)")
    cc.add_argument("--config-dir", help="a folder of your own config files searched too")
    cc.add_argument("overrides", nargs="*", help="suite=S records=A-B [beyond=M] [require_faster=false] "
                    "[claim_runs=K] [run_dir=DIR] and Hydra overrides for every step (model=..., task.size=...)")
    cc.set_defaults(func=cmd_cascade)

    su = sub.add_parser("setup", help="install an optional tool in its own environment: speedrunner setup aider")
    su.add_argument("tool", choices=["aider"])
    su.add_argument("--venv", help="where (default $SPEEDRUNNER_AIDER_VENV, else ~/.cache/speedrunner/aider-venv)")
    su.add_argument("--python", help="the interpreter for the venv (default: the system's python3, 3.10-3.12)")
    su.add_argument("--force", action="store_true", help="reinstall even if a finished install is there")
    su.add_argument("--check", action="store_true", help="only say whether it is installed (exit 1 if not)")
    su.set_defaults(func=cmd_setup)
    return p


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HYDRA_FULL_ERROR", "0")
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        if getattr(args, "func", None) is cmd_ladder and args.action == "time":
            err_console.print("interrupted; the same 'speedrunner ladder time' command with --resume continues "
                              "the calibration from the runs done so far")
        elif getattr(args, "func", None) is cmd_cascade:
            err_console.print("interrupted; 'speedrunner cascade --resume CASCADE_DIR' continues the cascade")
        else:
            err_console.print("interrupted; 'speedrunner resume RUN_DIR' continues the run")
        return 130
    except BrokenPipeError:  # the reader went away (e.g. `speedrunner tasks | head`): stop quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except (UserError, ReplayMismatch) as e:
        err_console.print("[red]error:[/red] " + escape(str(e)))
        return 2
    except Exception as e:  # Hydra / OmegaConf user errors carry their own lists of choices
        if _is_config_error(e):
            err_console.print("[red]config error:[/red] " + escape(str(e)))
            return 2
        raise


def _is_config_error(e: Exception) -> bool:
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    return isinstance(e, (HydraException, OmegaConfBaseException))


if __name__ == "__main__":
    sys.exit(main())
