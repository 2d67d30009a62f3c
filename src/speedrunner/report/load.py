"""Find run folders and read what the report needs from them: summary.json, and per node meta.json and
result.json. Logs, diffs and transcripts are never opened here, so a report over thousands of nodes
stays fast (the viewer reads those, for one run at a time)."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from speedrunner.core.errors import UserError

SUMMARY = "summary.json"
_LADDER_TASK = re.compile(r"(^|/)record_\d+$")
SKIP = {"nodes", "reference", "workspace", "__pycache__", ".git", ".hydra"}


@dataclass
class NodeRec:
    id: int
    parent: int | None
    operator: str
    status: str  # valid, invalid, buggy, or "pending" when result.json is missing
    metric: float | None


@dataclass
class RunRec:
    path: Path
    summary: dict[str, Any]
    nodes: list[NodeRec] = field(default_factory=list)
    judge: dict[str, Any] | None = None  # judge.json, when the similarity judge was run
    repro: dict[str, Any] | None = None  # reproduction distance of the best node (scoring/repro.py)

    # ---- identity of the run's cell
    @property
    def task(self) -> str:
        return str(self.summary.get("task") or "?")

    @property
    def model(self) -> str:
        return str(self.summary.get("model") or "?")

    @property
    def scaffold(self) -> str:
        return str(self.summary.get("scaffold") or "?")

    @property
    def hints(self) -> str:
        return hints_label(self.summary.get("hints"))

    @property
    def seed(self) -> Any:
        return self.summary.get("seed")

    @property
    def finished(self) -> bool:
        return self.summary.get("status") == "finished"

    # ---- the run's score
    @property
    def kind(self) -> str:
        """``fsr`` for ladder runs, else ``speedup``. A finished ladder run has an ``fsr`` key; one that is
        still running or was stopped by a budget cap has none yet, so a task id ending in ``/record_N``
        (the ladder's naming) counts too."""
        s = self.summary
        if "fsr" in s or "t_R" in s or _LADDER_TASK.search(self.task):
            return "fsr"
        return "speedup"

    @property
    def score(self) -> float | None:
        v = self.summary.get(self.kind)
        return _num(v)


def _num(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    v = float(v)
    return v if v == v and abs(v) != float("inf") else None


def hints_label(hints: Any) -> str:
    """The paper's names for hint regimes: [] -> none, [1] -> L1, [1, 2, 3] -> L1+2+3."""
    if not hints:
        return "none"
    try:
        levels = sorted({int(h) for h in hints})
    except (TypeError, ValueError):
        return str(hints)
    return "L" + "+".join(str(h) for h in levels)


def find_runs(paths: Iterable[str | Path]) -> list[Path]:
    """Every run folder (one holding summary.json) at or below each path, sorted, without duplicates.

    A run folder's own subfolders (nodes/, reference/) are not searched."""
    found: dict[str, Path] = {}
    for p in paths:
        root = Path(p).expanduser()
        if not root.exists():
            raise UserError(f"{root}: no such folder")
        if root.is_file():
            if root.name == SUMMARY:
                root = root.parent
            else:
                raise UserError(f"{root}: not a run folder (give a folder holding summary.json, or a folder of runs)")
        stack = [str(root)]
        while stack:
            d = stack.pop()
            if os.path.isfile(os.path.join(d, SUMMARY)):
                found.setdefault(os.path.realpath(d), Path(d))
                continue
            try:
                with os.scandir(d) as it:
                    for e in it:
                        if e.is_dir(follow_symlinks=False) and e.name not in SKIP and not e.name.startswith("."):
                            stack.append(e.path)
            except OSError:
                continue
    return sorted(found.values(), key=lambda q: str(q))


def _read_json(path: str) -> Any:
    with open(path, "rb") as f:
        return json.loads(f.read())


def load_nodes(run_dir: Path) -> list[NodeRec]:
    nodes_dir = os.path.join(run_dir, "nodes")
    out: list[NodeRec] = []
    try:
        entries = [e.name for e in os.scandir(nodes_dir) if e.name.startswith("v_")]
    except OSError:
        return out
    for name in entries:
        d = os.path.join(nodes_dir, name)
        try:
            meta = _read_json(os.path.join(d, "meta.json"))
        except (OSError, ValueError):
            continue
        try:
            res = _read_json(os.path.join(d, "result.json"))
        except (OSError, ValueError):
            res = None
        out.append(NodeRec(
            id=int(meta.get("id", -1)), parent=meta.get("parent"), operator=str(meta.get("operator", "?")),
            status=str(res.get("status", "?")) if res else "pending",
            metric=_num(res.get("metric")) if res else None))
    out.sort(key=lambda n: n.id)
    return out


def load_run(run_dir: Path, nodes: bool = True) -> RunRec:
    run_dir = Path(run_dir)
    try:
        summary = _read_json(os.path.join(run_dir, SUMMARY))
    except (OSError, ValueError) as e:
        raise UserError(f"{run_dir}: cannot read summary.json: {e}") from None
    if not isinstance(summary, dict):
        raise UserError(f"{run_dir}: summary.json is not a JSON object")
    judge = None
    jp = os.path.join(run_dir, "judge.json")
    if os.path.isfile(jp):
        try:
            judge = _read_json(jp)
        except (OSError, ValueError):
            judge = None
    return RunRec(path=run_dir, summary=summary, nodes=load_nodes(run_dir) if nodes else [], judge=judge,
                  repro=load_repro(run_dir, summary))


def load_repro(run_dir: Path, summary: dict[str, Any]) -> dict[str, Any] | None:
    """The run's reproduction distance: summary.json's ``repro`` (written at the end of a run), else the
    best node's ``nodes/v_N/repro.json`` (e.g. written afterwards by ``scoring.repro.repro_for_dir``)."""
    rep = summary.get("repro")
    if isinstance(rep, dict):
        return rep
    reeval = summary.get("reeval")
    best = reeval.get("chosen_node") if isinstance(reeval, dict) else summary.get("best_node")
    if best is None:
        return None
    if best == 0:
        return None if not os.path.isfile(os.path.join(run_dir, "nodes", "v_1", "repro.json")) else {
            "node": 0, "line_recall": 0.0, "line_precision": None, "hunk_recall": 0.0}
    path = os.path.join(run_dir, "nodes", f"v_{best}", "repro.json")
    if not os.path.isfile(path):  # a stat, not an open: runs without it cost nothing more
        return None
    try:
        data = _read_json(path)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def load_runs(paths: Iterable[str | Path], threads: int = 4) -> list[RunRec]:
    found = find_runs(paths)
    if threads > 1 and len(found) > 8:  # file reads release the GIL: a few threads overlap them
        with ThreadPoolExecutor(threads) as ex:
            runs = list(ex.map(load_run, found))
    else:
        runs = [load_run(p) for p in found]
    if not runs:
        raise UserError("no run folders found (a run folder holds summary.json)")
    return runs
