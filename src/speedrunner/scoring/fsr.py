"""Fraction of Speedup Recovered (Zhao et al., 2025).

    FSR = (t_R - t_agent) / (t_R - t_{R+1})

with every time measured on the same machine: t_R and t_{R+1} from that machine's calibration of the
ladder, or measured on the fly (t_R is the run's own baseline v_0; record R+1 is run once) when the
machine has no calibration. t_agent is the fastest valid node of the run, the baseline included, so a
run in which nothing beat the baseline scores exactly 0.
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


def fsr_for_run(run) -> dict[str, Any] | None:
    """FSR fields for ``summary.json`` of a run on a ladder task, or None for other tasks.

    ``run`` is a finished :class:`~speedrunner.search.loop.SearchRun`."""
    task = run.task
    if task.suite is None or task.record is None or task.metric.kind != "time":
        return None
    from speedrunner.core.errors import UserError
    from speedrunner.scoring.calibration import find_calibration, run_record_once, stale_records

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
        ref = None
        cal = find_calibration(task.suite, task.size, threads=run.executor.threads)
        stale_note = None
        if cal is not None:
            try:
                stale = stale_records(cal, task.suite, [task.record, task.record + 1], task.template_include)
            except UserError:  # a suite that is not a built-in ladder: nothing to compare against
                stale = []
            if stale:
                stale_note = (f"calibration {cal.get('_path')} timed another version of record(s) {stale}; "
                              "measured on the fly instead (run 'speedrunner ladder time' again)")
                cal = None
        if cal is not None:
            recs = cal.get("records", {})
            r, n = recs.get(str(task.record)), recs.get(str(task.record + 1))
            if r and n:
                ref = {"source": "calibration", "file": cal.get("_path"), "t_R": r["mean_ms"], "t_next": n["mean_ms"],
                       "fingerprint": cal.get("fingerprint"),
                       "scripts_verified": bool(r.get("script_sha256") and n.get("script_sha256"))}
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
    t_agent = reeval["nodes"][str(best.id)]["metric_mean"] if reeval is not None else best.outcome.metric
    out: dict[str, Any] = {"t_R": ref.get("t_R"), "t_next": ref.get("t_next"), "t_agent": t_agent,
                           "fsr_source": ref["source"], "t_agent_source": "reeval" if reeval is not None else "search"}
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
