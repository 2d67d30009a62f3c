"""Fraction of Speedup Recovered (Zhao et al., 2025).

    FSR = (t_R - t_agent) / (t_R - t_{R+1})

with every time measured on the same machine: t_R and t_{R+1} from that machine's calibration of the
ladder, or measured on the fly (t_R is the run's own baseline v_0; record R+1 is run once) when the
machine has no calibration. t_agent is the fastest valid node of the run, the baseline included, so a
run in which nothing beat the baseline scores exactly 0.

A calibration is taken at one time and the run at another; a machine whose speed drifts in between (a
busy neighbour, thermal limits, a slow spell of a VM) would move every time of the run against t_R and
t_next. So when FSR comes from a calibration, re-evaluation runs the task's starting code (record R)
before each re-run of the node, and t_agent is expressed in the calibration's time:
``t_agent = t_agent_measured * t_R / t_R_now``, where t_R_now is the mean of those reference runs. The
correction is applied only within ``reeval.max_drift`` (default 25 %); beyond it the machine is not in
the state it was calibrated in, FSR is left uncorrected and says so.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from speedrunner.workspace.fsutil import atomic_write_json, read_json


def fraction_of_speedup_recovered(t_r: float, t_next: float, t_agent: float) -> float:
    if not t_r > t_next:
        raise ValueError(f"record R+1 ({t_next:g}) is not faster than record R ({t_r:g}) on this machine: "
                         "no speedup to recover; recalibrate with 'speedrunner ladder time'")
    return (t_r - t_agent) / (t_r - t_next)


MAX_DRIFT = 0.25  # reeval.max_drift's default: beyond it, t_agent is not drift-corrected


def applies(task) -> bool:
    """FSR is defined for ladder tasks: a suite and a record, and a time metric."""
    return task.suite is not None and task.record is not None and task.metric.kind == "time"


def calibrated_times(run) -> tuple[dict[str, Any] | None, str | None]:
    """t_R and t_next from this machine's calibration, when it timed records R and R+1 as they are now:
    (the reference for ``calibration.json``, None) or (None, why the calibration was not used or None).
    A run that already cached its reference answers from that cache."""
    cache = Path(run.run_dir) / "calibration.json"
    if cache.is_file():
        ref = read_json(cache)
        return (ref, None) if ref.get("source") == "calibration" else (None, ref.get("calibration_note"))
    from speedrunner.core.errors import UserError
    from speedrunner.scoring.calibration import find_calibration, stale_records

    task = run.task
    cal = find_calibration(task.suite, task.size, threads=run.executor.threads)
    if cal is None:
        return None, None
    try:
        stale = stale_records(cal, task.suite, [task.record, task.record + 1], task.template_include)
    except UserError:  # a suite that is not a built-in ladder: nothing to compare against
        stale = []
    if stale:
        return None, (f"calibration {cal.get('_path')} timed another version of record(s) {stale}; "
                      "measured on the fly instead (run 'speedrunner ladder time' again)")
    recs = cal.get("records", {})
    r, n = recs.get(str(task.record)), recs.get(str(task.record + 1))
    if not (r and n):
        return None, None
    return {"source": "calibration", "file": cal.get("_path"), "t_R": r["mean_ms"], "t_next": n["mean_ms"],
            "fingerprint": cal.get("fingerprint"),
            "scripts_verified": bool(r.get("script_sha256") and n.get("script_sha256"))}, None


def drift_correction(run, ref: dict[str, Any], node_reeval: dict[str, Any] | None,
                     t_agent: float) -> tuple[float, dict[str, Any]]:
    """``t_agent`` in the calibration's time, from the reference runs of record R that re-evaluation
    interleaved with the node's re-runs; and the summary keys that say what was done."""
    refrun = (node_reeval or {}).get("reference")
    if ref.get("source") != "calibration" or not refrun:
        return t_agent, {}
    t_now = refrun.get("metric_mean")
    if not refrun.get("valid") or not t_now:
        return t_agent, {"drift_note": "the reference runs of record R were not all valid: t_agent not corrected "
                                       f"({'; '.join(refrun.get('reasons', [])[:2])})"}
    drift = t_now / ref["t_R"]
    limit = float(run.reeval_cfg.get("max_drift", MAX_DRIFT))
    keys: dict[str, Any] = {"t_R_now": t_now, "drift": drift - 1.0}
    if abs(drift - 1.0) > limit:
        keys["drift_note"] = (f"record {run.task.record} ran {drift - 1.0:+.1%} against the calibration "
                              f"({t_now:.6g} vs {ref['t_R']:.6g}), beyond reeval.max_drift={limit:g}: t_agent not "
                              "corrected; this machine is not in the state it was calibrated in (recalibrate "
                              "with 'speedrunner ladder time', or run on a quieter machine)")
        return t_agent, keys
    keys["t_agent_raw"] = t_agent
    return t_agent / drift, keys


def fsr_for_run(run) -> dict[str, Any] | None:
    """FSR fields for ``summary.json`` of a run on a ladder task, or None for other tasks.

    ``run`` is a finished :class:`~speedrunner.search.loop.SearchRun`."""
    task = run.task
    if not applies(task):
        return None
    from speedrunner.scoring.calibration import run_record_once

    best = run.best_node()
    reeval = run.extra_summary.get("reeval")
    if reeval is not None:
        best = run.tree.get(reeval["chosen_node"]) if reeval.get("chosen_node") is not None else None
    if best is None or best.id == 0:  # nothing beat the starting code: no reference run needed
        return {"fsr": 0.0, "t_agent": None, "fsr_source": "no_agent_node_beat_the_baseline"}
    cache = Path(run.run_dir) / "calibration.json"
    if cache.is_file():
        ref = read_json(cache)
    else:
        ref, stale_note = calibrated_times(run)
        if ref is None:
            root = run.tree.get(0)
            if root is None or root.outcome is None or not root.outcome.valid or task.reference_dir is None:
                return {"fsr": None, "fsr_note": (stale_note or "no calibration")
                        + ", and the baseline or the next record cannot be run"}
            res = run_record_once(task, task.reference_dir, Path(run.run_dir) / "reference", run.executor)
            ref = {"source": "on_the_fly", "t_R": root.outcome.metric, "t_next": res.get(task.metric.name),
                   "next_valid": res.get("valid"), "next_reason": res.get("reason")}
            if stale_note:
                ref["calibration_note"] = stale_note
            run.journal.write("reference_run", record=task.record + 1, **{k: v for k, v in res.items()})
        atomic_write_json(cache, ref)
    # trusted times: the node chosen by re-evaluation, its mean over the re-runs
    node_reeval = reeval["nodes"][str(best.id)] if reeval is not None else None
    t_agent = node_reeval["metric_mean"] if node_reeval is not None else best.outcome.metric
    t_agent, drift = drift_correction(run, ref, node_reeval, t_agent)
    source = "search" if reeval is None else "reeval_drift_corrected" if "t_agent_raw" in drift else "reeval"
    out: dict[str, Any] = {"t_R": ref.get("t_R"), "t_next": ref.get("t_next"), "t_agent": t_agent,
                           "fsr_source": ref["source"], "t_agent_source": source, **drift}
    for key in ("calibration_note", "scripts_verified"):
        if key in ref:
            out[key] = ref[key]
    if out["t_R"] is None or out["t_next"] is None:
        out["fsr"] = None
        out["fsr_note"] = f"record {task.record + 1} did not give a valid time: {ref.get('next_reason')}"
    else:
        try:
            raw = fraction_of_speedup_recovered(out["t_R"], out["t_next"], t_agent)
            # the starting code counts as a node: an agent slower than record R recovers nothing
            out["fsr"], out["fsr_raw"] = max(0.0, raw), raw
        except ValueError as e:
            out["fsr"], out["fsr_note"] = None, str(e)
    return out
