"""The run folder: the append-only journal and the node store (copies, hard links, diffs, meta)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time

import pytest

from speedrunner.core.types import Operator, Outcome, Status
from speedrunner.workspace.journal import Journal, read_events
from speedrunner.workspace.store import NodeStore, unified_diff

# ---------------------------------------------------------------------------------------------- journal


def test_journal_appends_numbered_events(tmp_path):
    path = tmp_path / "run" / "journal.jsonl"
    j = Journal(path)
    recs = [j.write("node_created", node=0), j.write("llm_call", node=1, tokens_in=10), j.write("done")]
    j.close()
    assert [r["seq"] for r in recs] == [0, 1, 2]
    lines = path.read_text().splitlines()
    assert len(lines) == 3
    events = [json.loads(line) for line in lines]
    assert events == recs
    assert [e["event"] for e in events] == ["node_created", "llm_call", "done"]
    assert events[1]["tokens_in"] == 10
    assert all(abs(e["t"] - time.time()) < 60 for e in events)


def test_journal_is_flushed_after_every_event(tmp_path):
    path = tmp_path / "journal.jsonl"
    j = Journal(path)
    j.write("a", x=1)
    # readable by another process before close
    assert read_events(path) == [json.loads(path.read_text())]
    j.close()


def test_journal_reopen_continues_numbering(tmp_path):
    path = tmp_path / "journal.jsonl"
    j = Journal(path)
    j.write("a")
    j.write("b")
    j.close()
    j = Journal(path)
    assert j.write("c")["seq"] == 2
    j.close()
    assert [e["seq"] for e in read_events(path)] == [0, 1, 2]


def test_truncated_last_line_is_dropped_on_reopen(tmp_path):
    path = tmp_path / "journal.jsonl"
    j = Journal(path)
    j.write("a")
    j.write("b")
    j.close()
    with open(path, "a") as f:
        f.write('{"seq": 2, "t": 1.0, "event": "node_fin')  # a crash in the middle of a write
    assert [e["event"] for e in read_events(path)] == ["a", "b"]  # readers skip it too
    j = Journal(path)
    rec = j.write("c")
    j.close()
    assert rec["seq"] == 2
    lines = path.read_text().splitlines()
    assert len(lines) == 3
    assert [json.loads(line)["event"] for line in lines] == ["a", "b", "c"]


def test_journal_values_that_are_not_json_are_written_as_text(tmp_path):
    path = tmp_path / "journal.jsonl"
    j = Journal(path)
    j.write("x", where=tmp_path, op=Operator.DEBUG)
    j.close()
    (e,) = read_events(path)
    assert e["where"] == str(tmp_path)


def test_read_events_of_missing_file(tmp_path):
    assert read_events(tmp_path / "nope.jsonl") == []


# ---------------------------------------------------------------------------------------------- node store


@pytest.fixture
def template(tmp_path):
    t = tmp_path / "template"
    (t / "pkg").mkdir(parents=True)
    (t / "__pycache__").mkdir()
    (t / "train.py").write_text("lr = 0.1\nsteps = 10\nprint(lr * steps)\n")
    (t / "pkg" / "util.py").write_text("def one():\n    return 1\n")
    (t / "notes.txt").write_text("to be deleted\n")
    (t / "data.bin").write_bytes(bytes(range(256)) * 40)  # 10 240 bytes: at the link threshold
    (t / "__pycache__" / "train.cpython-311.pyc").write_bytes(b"\x00junk")
    return t


@pytest.fixture
def store(tmp_path):
    return NodeStore(tmp_path / "run", link_threshold=10_240)


def read_meta(store: NodeStore, nid: int) -> dict:
    return json.loads((store.path(nid) / "meta.json").read_text())


def test_create_root_copies_the_template(store, template):
    root = store.create_root(template)
    ws = store.workspace(0)
    assert sorted(root.files) == ["data.bin", "notes.txt", "pkg/util.py", "train.py"]
    assert not (ws / "__pycache__").exists()
    assert (ws / "train.py").read_text() == (template / "train.py").read_text()
    assert (ws / "data.bin").read_bytes() == (template / "data.bin").read_bytes()
    # a copy, never a link into the user's template
    assert os.stat(ws / "data.bin").st_ino != os.stat(template / "data.bin").st_ino
    meta = read_meta(store, 0)
    assert meta["id"] == 0 and meta["name"] == "v_0"
    assert meta["parent"] is None and meta["children"] == []
    assert meta["operator"] == "root" and meta["depth"] == 0
    assert meta["files"]["train.py"]["size"] == len("lr = 0.1\nsteps = 10\nprint(lr * steps)\n")
    assert (store.path(0) / "diff.patch").read_text() == ""
    assert not list(store.dir.glob(".*tmp*"))


def test_create_child_applies_edits(store, template):
    root = store.create_root(template)
    edits = {"train.py": "lr = 0.2\nsteps = 10\nprint(lr * steps)\n", "notes.txt": None,
             "pkg/new.py": "X = 1\n"}
    child = store.create_child(root, 1, Operator.DRAFT, edits, hypothesis="a higher lr converges faster",
                               summary="double lr")
    ws = store.workspace(1)
    assert (ws / "train.py").read_text() == edits["train.py"]
    assert (ws / "pkg" / "new.py").read_text() == "X = 1\n"
    assert not (ws / "notes.txt").exists()
    assert "notes.txt" not in child.files
    assert sorted(child.files) == ["data.bin", "pkg/new.py", "pkg/util.py", "train.py"]
    assert (ws / "pkg" / "util.py").read_text() == "def one():\n    return 1\n"
    # the parent is untouched
    assert (store.workspace(0) / "train.py").read_text().startswith("lr = 0.1")
    assert (store.workspace(0) / "notes.txt").exists()
    assert not list(store.dir.glob(".*tmp*"))


def test_child_meta_fields(store, template):
    root = store.create_root(template)
    c1 = store.create_child(root, 1, Operator.DRAFT, {"train.py": "x = 1\n"}, hypothesis="h1", summary="s1")
    c2 = store.create_child(c1, 2, Operator.DEBUG, {"train.py": "x = 2\n"})
    c3 = store.create_child(c2, 3, Operator.DEBUG, {"train.py": "x = 3\n"})
    c4 = store.create_child(c3, 4, Operator.IMPROVE, {"train.py": "x = 4\n"}, coder_error=None)
    m1 = read_meta(store, 1)
    assert m1["parent"] == 0 and m1["operator"] == "draft" and m1["depth"] == 1 and m1["bug_depth"] == 1
    assert m1["hypothesis"] == "h1" and m1["summary"] == "s1"
    assert m1["children"] == [2]
    assert [read_meta(store, i)["bug_depth"] for i in (2, 3, 4)] == [2, 3, 1]
    assert [c.depth for c in (c2, c3, c4)] == [2, 3, 4]
    assert read_meta(store, 0)["children"] == [1]  # the parent's meta.json is updated on disk
    assert read_meta(store, 4)["children"] == []


def test_diff_patch_is_a_unified_diff_that_applies(store, template, tmp_path):
    root = store.create_root(template)
    edits = {"train.py": "lr = 0.2\nsteps = 10\nprint(lr * steps)\n", "notes.txt": None,
             "pkg/new.py": "X = 1\n"}
    store.create_child(root, 1, Operator.DRAFT, edits)
    patch = (store.path(1) / "diff.patch").read_text()
    assert "--- a/train.py\n+++ b/train.py\n@@ " in patch
    assert "-lr = 0.1\n+lr = 0.2\n" in patch
    assert "--- a/notes.txt\n+++ /dev/null\n" in patch and "-to be deleted\n" in patch
    assert "--- /dev/null\n+++ b/pkg/new.py\n" in patch and "+X = 1\n" in patch
    # it really is a patch: applied to the parent it gives the child
    if shutil.which("patch") is None:
        pytest.skip("no patch program")
    work = tmp_path / "apply"
    shutil.copytree(store.workspace(0), work)
    r = subprocess.run(["patch", "-p1", "-s", "-E"], input=patch, text=True, cwd=work, capture_output=True)
    assert r.returncode == 0, r.stdout + r.stderr
    for rel in ("train.py", "pkg/new.py", "pkg/util.py"):
        assert (work / rel).read_text() == (store.workspace(1) / rel).read_text()
    assert not (work / "notes.txt").exists()


def test_unified_diff_marks_missing_newline():
    d = unified_diff({"a.py": "x = 1\n"}, {"a.py": "x = 2"})
    assert "+x = 2\n\\ No newline at end of file\n" in d
    assert unified_diff({"a.py": "same\n"}, {"a.py": "same\n"}) == ""


def test_large_unchanged_files_are_hard_links_small_ones_copies(store, template):
    root = store.create_root(template)
    child = store.create_child(root, 1, Operator.DRAFT, {"train.py": "x = 1\n"})
    grandchild = store.create_child(child, 2, Operator.IMPROVE, {"train.py": "x = 2\n"})
    ino = {i: {rel: os.stat(store.workspace(i) / rel).st_ino for rel in ("data.bin", "pkg/util.py", "train.py")}
           for i in (0, 1, 2)}
    assert ino[1]["data.bin"] == ino[0]["data.bin"] == ino[2]["data.bin"]
    assert ino[1]["pkg/util.py"] != ino[0]["pkg/util.py"]
    assert ino[1]["train.py"] != ino[0]["train.py"]
    assert child.files["data.bin"]["linked"] is True and grandchild.files["data.bin"]["linked"] is True
    assert child.files["pkg/util.py"]["linked"] is False
    assert "sha256" in child.files["pkg/util.py"]
    assert os.stat(store.workspace(0) / "data.bin").st_nlink == 3


def test_an_edited_large_file_is_not_linked(store, template):
    root = store.create_root(template)
    big = "y = 0\n" * 3000
    child = store.create_child(root, 1, Operator.DRAFT, {"data.bin": big})
    assert os.stat(store.workspace(1) / "data.bin").st_ino != os.stat(store.workspace(0) / "data.bin").st_ino
    assert child.files["data.bin"]["linked"] is False
    assert (store.workspace(0) / "data.bin").read_bytes() == (template / "data.bin").read_bytes()


def test_files_changed_detects_an_in_place_write_to_a_linked_file(store, template):
    root = store.create_root(template)
    child = store.create_child(root, 1, Operator.DRAFT, {"train.py": "x = 1\n"})
    assert store.files_changed(child) == []
    time.sleep(0.05)  # let the clock move past the mtime the manifest recorded
    with open(store.workspace(1) / "data.bin", "r+b") as f:  # same size, new bytes
        f.write(b"\xff\xfe")
    assert store.files_changed(child) == ["data.bin"]


def test_files_changed_detects_a_modified_private_file(store, template):
    root = store.create_root(template)
    child = store.create_child(root, 1, Operator.DRAFT, {"train.py": "x = 1\n"})
    time.sleep(0.05)
    (store.workspace(1) / "pkg" / "util.py").write_text("def one():\n    return 2\n")  # same size
    (store.workspace(1) / "train.py").write_text("x = 1\n")  # rewritten with the same bytes: not a change
    assert store.files_changed(child) == ["pkg/util.py"]


def test_files_changed_detects_a_deleted_file_and_ignores_new_outputs(store, template):
    root = store.create_root(template)
    child = store.create_child(root, 1, Operator.DRAFT, {"train.py": "x = 1\n"})
    (store.workspace(1) / "notes.txt").unlink()
    (store.workspace(1) / "checkpoint.pt").write_bytes(b"weights")
    assert store.files_changed(child) == ["notes.txt"]


def test_load_all_reads_nodes_outcomes_and_children(store, template):
    root = store.create_root(template)
    c1 = store.create_child(root, 1, Operator.DRAFT, {"train.py": "x = 1\n"})
    store.create_child(root, 2, Operator.DRAFT, {"train.py": "x = 2\n"})
    store.create_child(c1, 3, Operator.IMPROVE, {"train.py": "x = 3\n"})
    store.write_result(c1, Outcome(status=Status.VALID, metric=1.5, valid=True, metrics={"t": 1.5}))
    (store.dir / ".v_9.tmp").mkdir()  # an unfinished node folder is not a node
    nodes = NodeStore(store.run_dir).load_all()
    assert sorted(nodes) == [0, 1, 2, 3]
    assert nodes[0].children == [1, 2] and nodes[1].children == [3]
    assert nodes[1].outcome is not None and nodes[1].outcome.status is Status.VALID
    assert nodes[1].outcome.metric == 1.5
    assert nodes[2].outcome is None
    assert nodes[3].operator is Operator.IMPROVE and nodes[3].parent == 1


def test_result_json_roundtrip(store, template):
    root = store.create_root(template)
    out = Outcome(status=Status.BUGGY, reason="crashed", exit_code=1, wall_s=0.5, timings={"exec_s": 0.5})
    store.write_result(root, out)
    data = json.loads((store.path(0) / "result.json").read_text())
    assert data["status"] == "buggy" and data["reason"] == "crashed" and data["valid"] is False
    assert Outcome.from_json(data) == out


def test_read_text_files_follows_the_manifest_and_patterns(store, template):
    root = store.create_root(template)
    (store.workspace(0) / "stray.py").write_text("made by the run\n")
    files = store.read_text_files(root, ["*.py"])
    assert files == {"pkg/util.py": "def one():\n    return 1\n",
                     "train.py": "lr = 0.1\nsteps = 10\nprint(lr * steps)\n"}


def test_discard_removes_a_node_folder(store, template):
    root = store.create_root(template)
    store.create_child(root, 1, Operator.DRAFT, {"train.py": "x\n"})
    store.discard(1)
    assert not store.path(1).exists()
    store.discard(1)  # twice is fine
