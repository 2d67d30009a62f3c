"""Synthetic run folders in the run-folder format (docs/FORMATS.md), for tests and the report benchmark.

They hold what the report and the viewer read: summary.json (with the ladder's FSR keys when
``ladder=True``), journal.jsonl (node and llm_call events), and per node meta.json, result.json,
diff.patch and stdout.log. No workspace files."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any


def _dump(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")


def make_run(run_dir: Path, *, task: str = "nanogpt_mini/record_3", model: str = "fake", scaffold: str = "aide",
             hints: list[int] | None = None, seed: int = 0, n_nodes: int = 20, ladder: bool = True,
             skill: float = 0.5, usd_per_call: float = 0.01, status: str = "finished",
             logs: bool = True, overrides: dict[int, dict[str, Any]] | None = None) -> Path:
    """Write one synthetic run. ``skill`` (0..1) moves the chance of valid, faster children.

    ``overrides`` maps a node id to fields to force: ``status``, ``metric``, ``parent``, ``operator``,
    ``diff``, ``stdout``, ``stderr``, ``hypothesis``, ``summary``, ``reason``."""
    rng = random.Random(f"{task}/{model}/{scaffold}/{hints}/{seed}")
    overrides = overrides or {}
    run_dir = Path(run_dir)
    (run_dir / "nodes").mkdir(parents=True, exist_ok=True)
    t_r = 1000.0 + rng.uniform(-20, 20)
    t_next = t_r * 0.8
    journal: list[dict[str, Any]] = []
    t = 1_800_000_000.0

    def ev(event: str, **kw: Any) -> None:
        nonlocal t
        t += 0.5
        journal.append({"seq": len(journal), "t": round(t, 3), "event": event, **kw})

    ev("run_started", schema=1, task=task, info={"scaffold": scaffold, "model": model, "hints": hints or [],
                                                 "seed": seed}, max_nodes=n_nodes)
    nodes: dict[int, dict[str, Any]] = {}
    spend = {"llm_calls": 0, "tokens_in": 0, "tokens_out": 0, "usd": 0.0}
    for nid in range(n_nodes + 1):
        o = overrides.get(nid, {})
        if nid == 0:
            parent, op, st, metric = None, "root", "valid", t_r
        else:
            valid_ids = [i for i, n in nodes.items() if n["status"] == "valid"]
            buggy_ids = [i for i, n in nodes.items() if n["status"] == "buggy" and i != 0]
            r = rng.random()
            if nid <= 3 or r < 0.25:
                parent, op = 0, "draft"
            elif buggy_ids and r < 0.5:
                parent, op = rng.choice(buggy_ids), "debug"
            else:
                parent, op = rng.choice(valid_ids), "improve"
            parent, op = o.get("parent", parent), o.get("operator", op)
            u = rng.random()
            st = "valid" if u < 0.35 + 0.4 * skill else ("invalid" if u < 0.5 + 0.4 * skill else "buggy")
            base = nodes[parent]["metric"] if parent is not None and nodes[parent]["metric"] else t_r
            metric = base * rng.uniform(1.02 - 0.25 * skill, 1.05) if st != "buggy" else None
        st, metric = o.get("status", st), o.get("metric", metric)
        reason = o.get("reason", {"valid": "", "invalid": "val_loss 5.1 > 5.045: the loss target was missed",
                                  "buggy": "exit code 1\nTraceback (most recent call last):\n  RuntimeError: boom"}[st])
        nodes[nid] = {"status": st, "metric": metric}
        if nid:
            ev("node_started", node=nid, parent=parent, operator=op)
            for role in ("ideator", "coder"):
                tin, tout = rng.randint(2000, 9000), rng.randint(200, 2000)
                ev("llm_call", node=nid, model_index=0, role=role, attempt=1, ok=True, latency_s=1.5, model=model,
                   tokens_in=tin, tokens_out=tout, usd=usd_per_call)
                spend["llm_calls"] += 1
                spend["tokens_in"] += tin
                spend["tokens_out"] += tout
                spend["usd"] += usd_per_call
        ev("node_created", node=nid, parent=parent, operator=op)
        d = run_dir / "nodes" / f"v_{nid}"
        d.mkdir(exist_ok=True)
        _dump(d / "meta.json", {
            "id": nid, "name": f"v_{nid}", "parent": parent, "children": [], "operator": op,
            "depth": 0 if parent is None else 1, "bug_depth": 1,
            "hypothesis": o.get("hypothesis", f"Hypothesis {nid}: a change that may help." if nid else ""),
            "summary": o.get("summary", f"change {nid}" if nid else ""), "coder_error": None,
            "created": t, "files": {"train_gpt.py": {"size": 4000, "mtime_ns": 1, "linked": False, "sha256": "0" * 64}}})
        metrics = {"train_time_ms": metric, "val_loss": 5.04} if metric is not None else {}
        _dump(d / "result.json", {"status": st, "metrics": metrics, "metric": metric, "valid": st == "valid",
                                  "reason": reason, "exit_code": 0 if st != "buggy" else 1, "wall_s": 12.0,
                                  "timings": {"exec_s": 12.0}})
        diff = o.get("diff", "" if nid == 0 else (
            f"--- a/train_gpt.py\n+++ b/train_gpt.py\n@@ -1,3 +1,3 @@\n import torch\n-lr = 0.001\n"
            f"+lr = 0.00{nid % 9 + 1}  # node {nid}\n x = 1\n"))
        (d / "diff.patch").write_text(diff, encoding="utf-8")
        if logs:
            (d / "stdout.log").write_text(o.get("stdout", "".join(
                f"step:{s}/100 train_time:{s * 10}ms\n" for s in range(0, 100, 10)) + (
                f"step:100/100 val_loss:5.04 train_time:{metric}ms\n" if metric else "")), encoding="utf-8")
            (d / "stderr.log").write_text(o.get("stderr", "Traceback: boom\n" if st == "buggy" else ""),
                                          encoding="utf-8")
        ev("node_finished", node=nid, status=st, valid=st == "valid", metric=metric, metrics=metrics,
           reason=reason[:2000])
    valid = {i: n["metric"] for i, n in nodes.items() if n["status"] == "valid" and n["metric"] is not None}
    best = min(valid, key=lambda i: (valid[i], -i)) if valid else None
    agent = [n for i, n in nodes.items() if i]
    summary: dict[str, Any] = {
        "schema": 1, "status": status, "stop_reason": "max_nodes" if status == "finished" else None, "task": task,
        "size": None, "scaffold": scaffold, "model": model, "coder": "editblock", "ideator": "llm",
        "hints": hints or [], "seed": seed, "config_hash": "0" * 16,
        "metric": "train_time_ms", "direction": "minimize", "n_nodes": n_nodes,
        "n_valid": sum(1 for n in agent if n["status"] == "valid"),
        "n_buggy": sum(1 for n in agent if n["status"] == "buggy"),
        "baseline_metric": nodes[0]["metric"] if nodes[0]["status"] == "valid" else None,
        "best_metric": valid.get(best) if best is not None else None, "best_node": best,
        "speedup": (nodes[0]["metric"] / valid[best]) if best is not None and nodes[0]["status"] == "valid" else None,
        "wall_s": 60.0 * n_nodes, **spend, "usd": round(spend["usd"], 6)}
    if ladder and status == "finished":
        t_agent = valid.get(best) if best is not None else None
        summary.update({"t_R": t_r, "t_next": t_next, "t_agent": t_agent, "fsr_source": "calibration",
                        "fsr": 0.0 if best in (None, 0) else (t_r - t_agent) / (t_r - t_next)})
    _dump(run_dir / "summary.json", summary)
    with open(run_dir / "journal.jsonl", "w", encoding="utf-8") as f:
        for e in journal:
            f.write(json.dumps(e, separators=(",", ":")) + "\n")
    return run_dir


def make_grid(root: Path, *, models=("m_a", "m_b"), scaffolds=("flat", "aide"), hint_sets=((), (1,)),
              records=(1, 2, 3), seeds=(0, 1, 2), n_nodes: int = 20, logs: bool = False, ladder: bool = True,
              task_fmt: str = "nanogpt_mini/record_{r}") -> list[Path]:
    """A folder of runs: one per model x scaffold x hints x record x seed."""
    out = []
    for mi, m in enumerate(models):
        for s in scaffolds:
            for h in hint_sets:
                for r in records:
                    for seed in seeds:
                        name = f"{m}-{s}-h{''.join(map(str, h)) or 'none'}-r{r}-s{seed}"
                        out.append(make_run(Path(root) / name, task=task_fmt.format(r=r), model=m, scaffold=s,
                                            hints=list(h), seed=seed, n_nodes=n_nodes, logs=logs, ladder=ladder,
                                            skill=0.3 + 0.3 * mi + 0.1 * len(h)))
    return out
