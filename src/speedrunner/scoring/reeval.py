"""Trusted re-evaluation: the harness re-runs a node's code itself, in clean copies, K times.

Each run starts from the node's source files only (nothing its own run left behind), under the task's
contract. When the task declares an evaluator, the harness also asks the script to export its trained
model (``reeval.export_env``) and computes the held-out test loss itself (see ``lm_eval.py``). A run is
valid only if it meets the task's validity conditions, its export scores, and the test loss is not
far worse than the validation loss the script reported (``max_test_gap``).

The run's FSR uses the re-evaluated times; a node whose own time differs from them by more than
``mismatch_tolerance`` is flagged. When FSR will come from a calibration taken at another time, each
re-run of the node is preceded by a run of the task's starting code (``reeval.drift_reference``), so
that FSR can express the node's time in the calibration's time (see ``fsr.py``).
"""

from __future__ import annotations

import shutil
import statistics
from pathlib import Path
from typing import Any

from speedrunner.core.registry import import_object
from speedrunner.execution.local import LocalExecutor
from speedrunner.scoring.outcome import score
from speedrunner.tasks.spec import Task
from speedrunner.workspace.fsutil import atomic_write_json, read_json


def _run_once(task: Task, files: dict[str, Path], rdir: Path, executor: LocalExecutor, k: int,
              evaluate: bool = True) -> dict[str, Any]:
    """One clean run of ``files`` in ``rdir``/workspace under the task's contract."""
    spec = task.reeval
    shutil.rmtree(rdir, ignore_errors=True)
    ws = rdir / "workspace"
    for rel, src in files.items():
        dst = ws / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dst)
    env = dict(task.env)
    export = None
    if evaluate and spec.get("export_env"):
        export = (rdir / "export" / "model.pt").resolve()  # the script runs elsewhere: never relative
        export.parent.mkdir(parents=True, exist_ok=True)
        env[spec["export_env"]] = str(export)
    ex = executor.run(task.command, cwd=ws, out_dir=rdir, timeout_s=task.timeout_s, env=env,
                      hidden=[Path(h) for h in task.hidden])
    out = score(task, ex)
    rec: dict[str, Any] = {"run": k, "valid": out.valid, "reason": out.reason, "metric": out.metric,
                           "metrics": out.to_json()["metrics"], "cpu_s": ex.cpu_s}
    if out.valid and evaluate and spec.get("evaluator"):
        try:
            if export is None or not export.is_file():
                raise ValueError(f"the script wrote no model export to ${spec['export_env']}")
            rec.update(import_object(spec["evaluator"], "reeval.evaluator")(export_path=export, **spec.get("evaluator_args", {})))
            gap = spec.get("max_test_gap")
            val = out.metrics.get("val_loss")
            if gap is not None and val is not None and rec["test_loss"] > val + float(gap):
                rec["valid"] = False
                rec["reason"] = (f"held-out test loss {rec['test_loss']:.4f} is more than {gap} above the "
                                 f"reported val_loss {val:.4f}")
        except Exception as e:  # the export is agent-made: any failure is the node's, not the harness's
            rec["valid"], rec["reason"] = False, f"export/evaluation failed: {type(e).__name__}: {e}"
    return rec


def _verdict(results: list[dict[str, Any]]) -> dict[str, Any]:
    metrics = [r["metric"] for r in results if r["valid"] and r["metric"] is not None]
    verdict: dict[str, Any] = {
        "valid": bool(results) and all(r["valid"] for r in results),
        "reasons": [f"run {r['run']}: {r['reason']}" for r in results if not r["valid"]],
        "runs": results,
        "metric_mean": statistics.fmean(metrics) if metrics else None,
        "metric_std": statistics.stdev(metrics) if len(metrics) > 1 else 0.0 if metrics else None,
    }
    for key in ("val_loss", "test_loss", "train_time"):
        vals = [r["metrics"].get(key) if key != "test_loss" else r.get("test_loss") for r in results if r["valid"]]
        vals = [v for v in vals if v is not None]
        verdict[key] = statistics.fmean(vals) if vals else None
    return verdict


def reevaluate(task: Task, files: dict[str, Path], work: Path, executor: LocalExecutor, runs: int,
               reference: dict[str, Path] | None = None) -> dict[str, Any]:
    """Run ``files`` (relative path -> source file) ``runs`` times; return the verdict.

    With ``reference`` (the task's starting code), run K of the node is preceded by run K of the
    reference in ``work/reference/run_K``, and the verdict's ``reference`` holds their verdict: the
    same machine, minutes apart, so that a drift of the machine's speed shows in both."""
    results, refs = [], []
    for k in range(runs):
        if reference is not None:
            refs.append(_run_once(task, reference, work / "reference" / f"run_{k}", executor, k, evaluate=False))
        results.append(_run_once(task, files, work / f"run_{k}", executor, k))
    verdict = _verdict(results)
    if reference is not None:
        verdict["reference"] = _verdict(refs)
    return verdict


def drift_reference(run) -> dict[str, Path] | None:
    """The task's starting code, when re-evaluation should time it beside the node: FSR will come from a
    calibration (taken at another time) and ``reeval.drift_reference`` is on (the default)."""
    from speedrunner.scoring.calibration import template_files
    from speedrunner.scoring.fsr import applies, calibrated_times

    if not run.reeval_cfg.get("drift_reference", True) or not applies(run.task):
        return None
    if calibrated_times(run)[0] is None:
        return None
    return dict(template_files(run.task.template_dir, run.task.template_include))


def node_files(store, node) -> dict[str, Path]:
    ws = store.workspace(node.id)
    return {rel: ws / rel for rel in node.files}


def reeval_for_run(run) -> dict[str, Any] | None:
    """Re-evaluate the best node (falling back to the next best when it fails) of a finished run; with
    ``all_valid``, every valid node. Results are cached in RUN_DIR/reeval/results.json for resume."""
    runs = int(run.reeval_cfg.get("runs", 0)) if getattr(run, "reeval_cfg", None) else 0
    if runs <= 0:
        return None
    cache = Path(run.run_dir) / "reeval" / "results.json"
    done: dict[str, Any] = read_json(cache) if cache.is_file() else {}
    ranked = [n for n in sorted(run.tree.values(), key=lambda n: n.id)
              if n.id != 0 and n.outcome is not None and n.outcome.valid and n.outcome.metric is not None
              and n.outcome.duplicate_of is None]  # a duplicate is its twin's code: re-running it again adds nothing
    sign = 1 if run.task.metric.direction == "minimize" else -1
    ranked.sort(key=lambda n: (sign * n.outcome.metric, -n.id))
    targets = ranked if run.reeval_cfg.get("all_valid") else ranked[: int(run.reeval_cfg.get("max_candidates", 3))]
    chosen = None
    # the same for every candidate: found once (it reads the calibration and hashes records R and R+1)
    reference = drift_reference(run) if any(str(n.id) not in done for n in targets) else None
    for node in targets:
        key = str(node.id)
        if key not in done:
            run.journal.write("reeval_started", node=node.id, runs=runs, reference=reference is not None)
            done[key] = reevaluate(run.task, node_files(run.store, node), Path(run.run_dir) / "reeval" / node.name,
                                   run.executor, runs, reference=reference)
            tol = float(run.task.reeval.get("mismatch_tolerance", 0.1))
            mean = done[key]["metric_mean"]
            if mean and node.outcome.metric and abs(node.outcome.metric - mean) / mean > tol:
                done[key]["mismatch"] = (f"the node's own {run.task.metric.name} ({node.outcome.metric:.6g}) differs "
                                         f"from the re-evaluated mean ({mean:.6g}) by more than {tol:.0%}")
            atomic_write_json(cache, done, durable=True)
            run.journal.write("reeval_finished", node=node.id, valid=done[key]["valid"],
                              metric_mean=done[key]["metric_mean"], reasons=done[key]["reasons"][:5],
                              **({"reference_mean": done[key]["reference"]["metric_mean"]}
                                 if "reference" in done[key] else {}))
        if done[key]["valid"] and chosen is None:
            chosen = node.id
            if not run.reeval_cfg.get("all_valid"):
                break
    return {"reeval": {"runs": runs, "chosen_node": chosen,
                       "nodes": {k: _brief(v) | ({"mismatch": v["mismatch"]} if "mismatch" in v else {})
                                    | ({"reference": _brief(v["reference"])} if "reference" in v else {})
                                 for k, v in done.items()}}}


def _brief(verdict: dict[str, Any]) -> dict[str, Any]:
    return {x: verdict[x] for x in ("valid", "metric_mean", "metric_std", "val_loss", "test_loss", "reasons")
            if x in verdict}
