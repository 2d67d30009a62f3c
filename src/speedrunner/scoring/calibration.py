"""Calibration of a ladder on the user's machine: time every record K times, test every rung.

The file is keyed by a machine fingerprint (CPU model, logical cores, threads, torch and Python
versions), so FSR is always computed from times measured on the machine the run is on. Records run
in interleaved rounds (1, 2, ..., N, then again) so that slow drift of the machine spreads evenly.
Each record's entry carries the SHA-256 of the script files that were timed (``script_sha256``): FSR
does not use a calibration whose record R or R+1 has changed since (see ``stale_records``).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from speedrunner.core.errors import UserError
from speedrunner.execution.local import LocalExecutor
from speedrunner.scoring.outcome import score
from speedrunner.tasks.registry import BUILTIN_ROOT, list_tasks
from speedrunner.tasks.spec import Task, load_task
from speedrunner.workspace.fsutil import atomic_write_json, read_json
from speedrunner.workspace.store import matches

SCHEMA = 1


def cache_root() -> Path:
    return Path(os.environ.get("SPEEDRUNNER_CACHE", Path.home() / ".cache" / "speedrunner")).expanduser()


def machine_info(threads: int) -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        import torch

        torch_version = torch.__version__
    except ImportError:  # pragma: no cover - torch is a dependency
        torch_version = "none"
    return {"cpu": cpu, "cores": os.cpu_count(), "threads": threads, "torch": torch_version,
            "python": ".".join(map(str, sys.version_info[:2])), "system": platform.system()}


def fingerprint(threads: int) -> str:
    info = machine_info(threads)
    return hashlib.sha256(json.dumps(info, sort_keys=True).encode()).hexdigest()[:12]


def calibration_path(suite: str, size: str | None, threads: int) -> Path:
    return cache_root() / "calibration" / f"{suite.replace('/', '_')}_{size or 'default'}_{fingerprint(threads)}.json"


def load_calibration(path: Path) -> dict[str, Any]:
    """A calibration file, checked as far as the table, the plot and FSR read it; a file that is not one
    stops with its path and the fix instead of a traceback."""
    fix = "time the ladder again with 'speedrunner ladder time' (or pass another --calibration FILE)"
    try:
        data = read_json(path)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: not a readable calibration file ({e}); {fix}") from None
    recs = data.get("records") if isinstance(data, dict) else None

    def is_time(x: Any) -> bool:
        return x is None or (isinstance(x, (int, float)) and not isinstance(x, bool))

    if not (isinstance(recs, dict) and all(str(k).isdigit() and isinstance(r, dict) and "mean_ms" in r
                                           and is_time(r["mean_ms"]) for k, r in recs.items())):
        raise UserError(f"{path}: field 'records' must map record numbers to their timings, each with a "
                        f"'mean_ms' (ms, or null), as 'speedrunner ladder time' writes them; {fix}")
    return data


def find_calibration(suite: str, size: str | None, threads: int) -> dict[str, Any] | None:
    p = calibration_path(suite, size, threads)
    if not p.is_file():
        return None
    data = load_calibration(p)
    data["_path"] = str(p)
    return data


# ---------------------------------------------------------------------------------------------- ladder


def suite_dir(suite: str) -> Path:
    d = BUILTIN_ROOT / suite
    if not (d / "ladder.yaml").is_file():
        raise UserError(f"suite {suite!r} has no ladder.yaml under {BUILTIN_ROOT}")
    return d


def ladder_records(suite: str) -> list[dict[str, Any]]:
    data = yaml.safe_load((suite_dir(suite) / "ladder.yaml").read_text())
    return list(data.get("records", []))


def record_template(suite: str, record: int) -> Path:
    base = suite_dir(suite) / f"record_{record}"
    for d in (base / "template", base):
        if (d / "train_gpt.py").is_file():
            return d
    raise UserError(f"{base}: no train_gpt.py for record {record} of {suite}")


def template_files(template: Path, include: list[str]) -> list[tuple[str, Path]]:
    """The files of a record's template that a run gets (``template_include``), as (relative path, path)."""
    out = []
    for p in sorted(template.rglob("*")):
        rel = p.relative_to(template).as_posix()
        if p.is_file() and "__pycache__" not in p.parts and matches(rel, include):
            out.append((rel, p))
    return out


def record_digest(suite: str, record: int, include: list[str]) -> str:
    """SHA-256 over the record's template files that a run gets: names and bytes."""
    h = hashlib.sha256()
    for rel, p in template_files(record_template(suite, record), include):
        h.update(rel.encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()


def stale_records(cal: dict[str, Any], suite: str, records: list[int], include: list[str]) -> list[int]:
    """The records among ``records`` whose scripts differ from the ones the calibration timed. A record
    whose entry has no ``script_sha256`` (a file written before digests existed) is not called stale."""
    out = []
    for r in records:
        want = cal.get("records", {}).get(str(r), {}).get("script_sha256")
        if want is not None and want != record_digest(suite, r, include):
            out.append(r)
    return out


def parse_records(spec: str, available: list[int]) -> list[int]:
    """'1-5', '3', '1,4,7', 'all' -> record numbers (checked against the ladder)."""
    if spec in ("all", ""):
        return available
    out: list[int] = []
    for part in spec.split(","):
        a, dash, b = part.partition("-")
        try:
            lo, hi = int(a), int(b) if dash else int(a)
        except ValueError:
            raise UserError(f"--records: cannot read {spec!r}; write e.g. 1-10, 3 or 1,4,7") from None
        out += list(range(lo, hi + 1))
    missing = [r for r in out if r not in available]
    if missing:
        raise UserError(f"--records: the ladder has no record(s) {missing}; it has {available[0]}-{available[-1]}")
    return out


def suite_task(suite: str, size: str | None, data_dir: Path | None) -> Task:
    """Any task of the suite: gives the log parsers, validity conditions and env for a size."""
    tasks = {tid: p for tid, p in list_tasks().items() if tid.startswith(f"{suite}/")}
    if not tasks:
        raise UserError(f"suite {suite!r} has no tasks")
    tid, path = sorted(tasks.items())[0]
    return load_task(path, tid, size=size, data_dir=data_dir)


def run_record_once(task: Task, template: Path, work: Path, executor: LocalExecutor,
                    extra_env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run one record's script under the task's contract in a scratch copy; return its metrics."""
    shutil.rmtree(work, ignore_errors=True)
    ws = work / "workspace"
    ws.mkdir(parents=True)
    for rel, p in template_files(template, task.template_include):
        (ws / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(p, ws / rel)
    ex = executor.run(task.command, cwd=ws, out_dir=work, timeout_s=task.timeout_s,
                      env={**task.env, **(extra_env or {})}, hidden=[Path(h) for h in task.hidden])
    out = score(task, ex)
    return {**out.metrics, "valid": out.valid, "status": out.status.value, "reason": out.reason}


def welch_less(a: list[float], b: list[float]) -> float | None:
    """One-sided Welch t-test p-value for mean(a) < mean(b)."""
    if len(a) < 2 or len(b) < 2:
        return None
    from scipy import stats

    res = stats.ttest_ind(a, b, equal_var=False, alternative="less")
    return float(res.pvalue)


def below_target(losses: list[float], target: float) -> float | None:
    """One-sided one-sample t-test p-value for mean(losses) < target (0 when every run is under it
    with no spread at all)."""
    if len(losses) < 2:
        return None
    if statistics.pstdev(losses) == 0:
        return 0.0 if losses[0] < target else 1.0
    from scipy import stats

    return float(stats.ttest_1samp(losses, target, alternative="less").pvalue)


def summarize(records: dict[str, dict[str, Any]], target: float | None, alpha: float = 0.01) -> None:
    prev = None
    first_mean = None
    for key in sorted(records, key=int):
        r = records[key]
        times = [t for t in r["train_time_ms"] if t is not None]
        losses = [x for x in r["val_loss"] if x is not None]
        r["n"] = len(times)
        r["mean_ms"] = statistics.fmean(times) if times else None
        r["std_ms"] = statistics.stdev(times) if len(times) > 1 else 0.0
        r["cv"] = (r["std_ms"] / r["mean_ms"]) if r["mean_ms"] else None
        r["mean_val_loss"] = statistics.fmean(losses) if losses else None
        r["all_valid"] = all(r["valid"]) and len(r["valid"]) > 0
        r["p_below_target"] = below_target(losses, target) if target is not None else None
        # Reaching the target is checked run by run (each run valid: final val_loss <= target). The t-test of
        # the mean loss is kept for information only: a record whose seeds land far below the target (record 2
        # at full size is bimodal) has a wide loss spread and would fail it while every run reached the target.
        r["reaches_target"] = r["all_valid"]
        r["p_faster_than_prev"] = welch_less(times, prev["train_time_ms"]) if prev else None
        r["significant"] = None if prev is None else bool(r["p_faster_than_prev"] is not None
                                                           and r["p_faster_than_prev"] < alpha)
        if first_mean is None:
            first_mean = r["mean_ms"]
        r["speedup_vs_first"] = (first_mean / r["mean_ms"]) if first_mean and r["mean_ms"] else None
        prev = r


def round_factors(records: dict[str, dict[str, Any]], min_records: int = 3) -> list[float | None]:
    """How fast the machine ran in each round: the median, over the records timed in that round, of
    (this run's time / the record's mean); 1.05 means the round ran 5 % slow. The median, so that one
    record's own spread is not taken for the machine's. None for a round with fewer than ``min_records``
    timed records. Records run in interleaved rounds, so a factor far from 1 is drift of the machine,
    not of a script."""
    runs = [r.get("train_time_ms") or [] for r in records.values()]
    out: list[float | None] = []
    for k in range(max(map(len, runs), default=0)):
        logs = [math.log(t[k] / r["mean_ms"]) for t, r in zip(runs, records.values(), strict=True)
                if len(t) > k and t[k] and r.get("mean_ms")]
        out.append(math.exp(statistics.median(logs)) if len(logs) >= min_records else None)
    return out


def round_adjusted_cv(times: list[float | None], factors: list[float | None]) -> float | None:
    """A record's CV once each run is divided by its round's factor: the spread the machine's drift does
    not explain. A diagnostic only; ``cv`` (raw) is the figure."""
    adj = [t / f for t, f in zip(times, factors, strict=False) if t and f]
    if len(adj) < 2 or len(adj) < len([t for t in times if t]):
        return None
    return statistics.stdev(adj) / statistics.fmean(adj)


def drift_summary(cal: dict[str, Any], goal: float = 0.03) -> list[str]:
    """Lines for the end of ``ladder time`` and ``ladder table``: the rounds' factors and the records whose
    CV is over ``goal``. Derived from the runs, so a file written before these diagnostics gets them too."""
    factors = round_factors(cal["records"])
    if not any(factors):
        return []
    fs = ", ".join("-" if f is None else f"{f:.3f}" for f in factors)
    lines = [f"rounds ran at {fs} x the records' means (1 = no drift of the machine between rounds)"]
    noisy = [(k, r) for k, r in sorted(cal["records"].items(), key=lambda kv: int(kv[0]))
             if r.get("cv") is not None and r["cv"] > goal]
    if noisy:
        adjusted = [(k, r["cv"], round_adjusted_cv(r.get("train_time_ms") or [], factors)) for k, r in noisy]
        adj = ", ".join(f"{k}: {100 * cv:.1f} % ({'-' if a is None else f'{100 * a:.1f} %'})" for k, cv, a in adjusted)
        lines.append(f"CV above {100 * goal:.0f} % for record(s) {adj}; in brackets, the CV with each round's "
                     "factor divided out. Much lower in brackets: the machine drifted between rounds (time again "
                     "when it is quiet, pin with --cpus); about the same: the record varies by itself, or the "
                     "machine slowed in spells shorter than a round")
    return lines


def partial_path(out: Path) -> Path:
    """Where ``ladder time`` keeps the runs done so far: beside the calibration, never at its path, so
    that FSR cannot take an unfinished calibration."""
    return out.with_name(out.name.removesuffix(".json") + ".partial.json")


def _resumable(old: dict[str, Any], new: dict[str, Any]) -> str | None:
    """Why ``old`` (a partial calibration) cannot be continued as ``new``, or None."""
    for key in ("suite", "size", "fingerprint", "runs_per_record", "cpus", "target_val_loss"):
        if old.get(key) != new.get(key):
            return f"its {key} is {old.get(key)!r}, this one's {new.get(key)!r}"
    if sorted(old.get("records", {})) != sorted(new["records"]):
        return f"it times records {sorted(old.get('records', {}), key=int)}"
    for r, rec in new["records"].items():
        if old["records"][r].get("script_sha256") != rec["script_sha256"]:
            return f"record {r}'s script has changed since"
    return None


def time_ladder(suite: str, records: list[int], runs: int, size: str | None, threads: int,
                progress=print, work_dir: Path | None = None, cpus: list[int] | None = None,
                partial: Path | None = None, resume: bool = False) -> dict[str, Any]:
    """Time ``records`` ``runs`` times each in interleaved rounds. With ``partial``, the runs done so far
    are saved there after each run; with ``resume``, a partial file of the same ladder, machine and
    settings is continued (its runs are kept, the missing ones made)."""
    from speedrunner.runner import prepare_data

    first = suite_task(suite, size, None)
    data_dir = prepare_data(first.data) if first.data else None
    task = suite_task(suite, size, data_dir)
    target = task.vars.get("target_val_loss")
    names = {int(r["record"]): r for r in ladder_records(suite)}
    executor = LocalExecutor(threads=threads, cpus=cpus)
    work = work_dir or (cache_root() / "calibration" / "work")
    result: dict[str, Any] = {
        "schema": SCHEMA, "suite": suite, "size": task.size, "fingerprint": fingerprint(threads),
        "machine": machine_info(threads), "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "runs_per_record": runs,
        "target_val_loss": target, "metric": task.metric.name, "cpus": cpus,
        "records": {str(r): {"name": names.get(r, {}).get("name", f"record_{r}"),
                             "innovation": names.get(r, {}).get("innovation", ""),
                             "script_sha256": record_digest(suite, r, task.template_include),
                             "train_time_ms": [], "val_loss": [], "valid": [], "reasons": []} for r in records},
    }
    if partial is not None and partial.is_file():
        if not resume:
            progress(f"note: {partial} holds an unfinished calibration; starting over (--resume continues it)")
        else:
            old = read_json(partial)
            why = _resumable(old, result)
            if why is not None:
                raise UserError(f"--resume: {partial} cannot be continued: {why}. Delete it to start over")
            result["records"] = old["records"]
            result["created"] = old.get("created", result["created"])
            done = sum(len(rec["train_time_ms"]) for rec in old["records"].values())
            progress(f"resuming {partial}: {done} of {runs * len(records)} runs already done")
    for k in range(runs):
        for r in records:
            if len(result["records"][str(r)]["train_time_ms"]) > k:
                continue  # done before a resume
            t0 = time.time()
            res = run_record_once(task, record_template(suite, r), work / f"record_{r}", executor,
                                  extra_env={"SPEEDRUNNER_SEED": str(1337 + k)})
            rec = result["records"][str(r)]
            rec["train_time_ms"].append(res.get(task.metric.name))
            rec["val_loss"].append(res.get("val_loss"))
            rec["valid"].append(bool(res.get("valid")))
            rec["reasons"].append(res.get("reason", ""))
            if partial is not None:
                atomic_write_json(partial, result, durable=True)
            progress(f"run {k + 1}/{runs} record {r}: {task.metric.name}={res.get(task.metric.name)} "
                     f"val_loss={res.get('val_loss')} {res.get('status')} ({time.time() - t0:.0f} s wall)")
    for r in stale_records(result, suite, records, task.template_include):  # edited while being timed
        result["records"][str(r)]["script_sha256"] = None
        result["records"][str(r)]["script_changed_during_timing"] = True
        progress(f"warning: record {r}'s script changed while the ladder was being timed; time it again")
    summarize(result["records"], target)
    result["round_factors"] = round_factors(result["records"])
    for rec in result["records"].values():
        rec["cv_round_adjusted"] = round_adjusted_cv(rec["train_time_ms"], result["round_factors"])
    return result


def save_calibration(result: dict[str, Any], out: Path | None = None) -> Path:
    path = out or calibration_path(result["suite"], result["size"], result["machine"]["threads"])
    atomic_write_json(path, result, durable=True)
    return path


def ladder_table(cal: dict[str, Any]) -> str:
    """Markdown table of a calibration (the figure bench/RESULTS.md reports)."""
    lines = ["| record | innovation | mean time (s) | std (s) | CV | final val loss | p (faster than prev) | "
             "speedup vs record 1 |", "|---|---|---|---|---|---|---|---|"]
    def f(x, fmt, scale=1.0):  # a field a hand-written file may lack prints as '-'
        return "-" if x is None else format(x * scale, fmt)

    for key in sorted(cal["records"], key=int):
        r = cal["records"][key]
        lines.append(f"| {key} | {r.get('innovation') or r.get('name') or '-'} | {f(r['mean_ms'], '.2f', 1e-3)} | "
                     f"{f(r.get('std_ms'), '.2f', 1e-3)} | {f(r.get('cv'), '.1f', 100)}% | "
                     f"{f(r.get('mean_val_loss'), '.4f')} | {f(r.get('p_faster_than_prev'), '.2g')} | "
                     f"{f(r.get('speedup_vs_first'), '.2f')}x |")
    return "\n".join(lines)


def plot_ladder(cal: dict[str, Any], out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = sorted(cal["records"], key=int)
    means = [cal["records"][k]["mean_ms"] / 1000 if cal["records"][k]["mean_ms"] else 0 for k in keys]
    stds = [(cal["records"][k].get("std_ms") or 0) / 1000 for k in keys]
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=120)
    ax.bar([int(k) for k in keys], means, yerr=stds, capsize=3, color="#4c72b0")
    for k, m in zip(keys, means, strict=True):
        sp = cal["records"][k].get("speedup_vs_first")
        if sp:
            ax.annotate(f"{sp:.1f}x", (int(k), m), ha="center", va="bottom", fontsize=8)
    ax.set_xlabel("record")
    ax.set_ylabel("train time to target (s)")
    ax.set_xticks([int(k) for k in keys])
    m = cal.get("machine") or {}
    ax.set_title(f"{cal.get('suite', '?')} ({cal.get('size', '?')}), target val loss {cal.get('target_val_loss')}, "
                 f"{cal.get('runs_per_record', '?')} runs each\n{m.get('cpu', '?')}, {m.get('threads', '?')} "
                 f"thread(s), torch {m.get('torch', '?')}", fontsize=9)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out
