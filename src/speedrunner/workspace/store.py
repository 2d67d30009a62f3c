"""The node store: ``RUN_DIR/nodes/v_N/``.

Each node folder holds ``workspace/`` (the node's files, where its command runs), ``meta.json`` (tree
position, operator, hypothesis, file manifest), ``diff.patch`` (against the parent), and once run,
``stdout.log``, ``stderr.log`` and ``result.json``. A node folder appears atomically (built under a
temporary name, then renamed), so after a crash it is either whole or absent.

Unchanged files at or above ``link_threshold`` bytes are hard-linked from the parent rather than copied,
so a template with large data costs nothing per node. The manifest records each file's size and
mtime so that an in-place write to a shared (linked) file is detected after a run.
"""

from __future__ import annotations

import difflib
import fnmatch
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from speedrunner.core.types import Operator, Outcome
from speedrunner.workspace.fsutil import (
    atomic_write_json,
    atomic_write_text,
    fsync_dir,
    read_json,
    sha256_file,
)

LINK_THRESHOLD = 1 << 20
SKIP_DIRS = {"__pycache__", ".git", ".ipynb_checkpoints"}


@dataclass
class Node:
    id: int
    parent: int | None
    operator: Operator
    depth: int = 0
    bug_depth: int = 1
    hypothesis: str = ""
    summary: str = ""
    children: list[int] = field(default_factory=list)
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    created: float = 0.0
    coder_error: str | None = None
    outcome: Outcome | None = None

    @property
    def name(self) -> str:
        return f"v_{self.id}"

    def meta(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "parent": self.parent,
            "children": self.children,
            "operator": self.operator.value,
            "depth": self.depth,
            "bug_depth": self.bug_depth,
            "hypothesis": self.hypothesis,
            "summary": self.summary,
            "coder_error": self.coder_error,
            "created": self.created,
            "files": self.files,
        }

    @classmethod
    def from_meta(cls, m: dict[str, Any]) -> Node:
        return cls(
            id=m["id"], parent=m["parent"], operator=Operator(m["operator"]), depth=m.get("depth", 0),
            bug_depth=m.get("bug_depth", 1), hypothesis=m.get("hypothesis", ""), summary=m.get("summary", ""),
            children=list(m.get("children", [])), files=m.get("files", {}), created=m.get("created", 0.0),
            coder_error=m.get("coder_error"),
        )


def _iter_files(root: Path):
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS)
        for fn in sorted(filenames):
            p = Path(dirpath) / fn
            if p.is_file() and not p.is_symlink():
                yield p.relative_to(root).as_posix(), p


def _stat_entry(p: Path, linked: bool) -> dict[str, Any]:
    st = p.stat()
    entry: dict[str, Any] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "linked": linked}
    if not linked:
        entry["sha256"] = sha256_file(p)
    return entry


def matches(path: str, patterns: list[str]) -> bool:
    """Glob match on the relative path, or on the file name alone ('*.py' matches 'pkg/a.py');
    a leading '**/' also matches files at the top ('**/*.py' matches 'a.py')."""
    name = Path(path).name
    for pat in patterns:
        if fnmatch.fnmatch(path, pat) or fnmatch.fnmatch(name, pat):
            return True
        if pat.startswith("**/") and fnmatch.fnmatch(path, pat[3:]):
            return True
    return False


def is_text(p: Path, limit: int = 512 * 1024) -> bool:
    try:
        if p.stat().st_size > limit:
            return False
        p.read_bytes().decode("utf-8")
        return True
    except (OSError, UnicodeDecodeError):
        return False


def unified_diff(old: dict[str, str | None], new: dict[str, str | None]) -> str:
    out: list[str] = []
    for path in sorted(set(old) | set(new)):
        a, b = old.get(path), new.get(path)
        if a == b:
            continue
        al = [] if a is None else a.splitlines(keepends=True)
        bl = [] if b is None else b.splitlines(keepends=True)
        for line in difflib.unified_diff(al, bl, f"a/{path}" if a is not None else "/dev/null",
                                         f"b/{path}" if b is not None else "/dev/null"):
            out.append(line if line.endswith("\n") else line + "\n\\ No newline at end of file\n")
    return "".join(out)


class NodeStore:
    def __init__(self, run_dir: Path, link_threshold: int = LINK_THRESHOLD):
        self.run_dir = Path(run_dir)
        self.dir = self.run_dir / "nodes"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.link_threshold = link_threshold

    def path(self, node_id: int) -> Path:
        return self.dir / f"v_{node_id}"

    def workspace(self, node_id: int) -> Path:
        return self.path(node_id) / "workspace"

    # ----- reading -----
    def load_all(self) -> dict[int, Node]:
        """Every complete node folder; children are re-derived from parent links."""
        nodes: dict[int, Node] = {}
        for d in self.dir.glob("v_*"):
            meta = d / "meta.json"
            if not meta.is_file():
                continue
            node = Node.from_meta(read_json(meta))
            res = d / "result.json"
            if res.is_file():
                node.outcome = Outcome.from_json(read_json(res))
            nodes[node.id] = node
        for n in nodes.values():
            n.children = []
        for n in sorted(nodes.values(), key=lambda n: n.id):
            if n.parent is not None and n.parent in nodes:
                nodes[n.parent].children.append(n.id)
        return nodes

    def read_text_files(self, node: Node, patterns: list[str]) -> dict[str, str]:
        """The node's editable text files (by its manifest, not whatever its run left behind)."""
        out = {}
        ws = self.workspace(node.id)
        for rel in sorted(node.files):
            if matches(rel, patterns) and is_text(ws / rel):
                out[rel] = (ws / rel).read_text(encoding="utf-8")
        return out

    # ----- writing -----
    def create_root(self, template: Path, include: list[str] | None = None) -> Node:
        """v_0 from the template folder: the files matching ``include`` (default: all)."""
        node = Node(id=0, parent=None, operator=Operator.ROOT, created=time.time())
        tmp = self.dir / ".v_0.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        ws = tmp / "workspace"
        ws.mkdir(parents=True)
        for rel, src in _iter_files(template):
            if include is not None and not matches(rel, include):
                continue
            dst = ws / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)
            node.files[rel] = _stat_entry(dst, linked=False)
        self._finish(node, tmp, diff="")
        return node

    def create_child(self, parent: Node, node_id: int, operator: Operator, edits: dict[str, str | None],
                     hypothesis: str = "", summary: str = "", coder_error: str | None = None) -> Node:
        """Create ``v_<node_id>`` from ``parent`` with ``edits`` (path -> new text, or None to delete)."""
        node = Node(
            id=node_id, parent=parent.id, operator=operator, depth=parent.depth + 1,
            bug_depth=parent.bug_depth + 1 if operator is Operator.DEBUG else 1,
            hypothesis=hypothesis, summary=summary, created=time.time(), coder_error=coder_error,
        )
        src_ws = self.workspace(parent.id)
        tmp = self.dir / f".v_{node_id}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        ws = tmp / "workspace"
        ws.mkdir(parents=True)
        old_text: dict[str, str | None] = {}
        for rel in sorted(parent.files):
            if rel in edits:
                continue
            src, dst = src_ws / rel, ws / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            linked = False
            if src.stat().st_size >= self.link_threshold:
                try:
                    os.link(src, dst)
                    linked = True
                except OSError:
                    shutil.copy2(src, dst)
            else:
                shutil.copy2(src, dst)
            node.files[rel] = _stat_entry(dst, linked=linked)
        for rel, text in sorted(edits.items()):
            if rel in parent.files and is_text(src_ws / rel):
                old_text[rel] = (src_ws / rel).read_text(encoding="utf-8")
            else:
                old_text[rel] = None
            if text is None:
                continue
            dst = ws / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.write_text(text, encoding="utf-8")
            node.files[rel] = _stat_entry(dst, linked=False)
        self._finish(node, tmp, diff=unified_diff(old_text, dict(edits)))
        parent.children.append(node_id)
        atomic_write_json(self.path(parent.id) / "meta.json", parent.meta())
        return node

    def _finish(self, node: Node, tmp: Path, diff: str) -> None:
        atomic_write_text(tmp / "diff.patch", diff)
        atomic_write_json(tmp / "meta.json", node.meta())
        final = self.path(node.id)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        fsync_dir(self.dir)

    def write_result(self, node: Node, outcome: Outcome) -> None:
        node.outcome = outcome
        atomic_write_json(self.path(node.id) / "result.json", outcome.to_json(), durable=True)

    def discard_tmp(self, node_id: int) -> None:
        """Remove the half-built folder of a node whose creation failed."""
        shutil.rmtree(self.dir / f".v_{node_id}.tmp", ignore_errors=True)

    def discard(self, node_id: int) -> None:
        """Remove a node folder that never finished (a crash between creation and result)."""
        shutil.rmtree(self.path(node_id), ignore_errors=True)

    def files_changed(self, node: Node) -> list[str]:
        """Files of the node's manifest that its run changed: a shared (linked) file whose size or mtime
        moved, or a private file whose content no longer matches its hash."""
        changed = []
        ws = self.workspace(node.id)
        for rel, entry in sorted(node.files.items()):
            p = ws / rel
            try:
                st = p.stat()
            except FileNotFoundError:
                changed.append(rel)
                continue
            if entry.get("linked"):
                if st.st_size != entry["size"] or st.st_mtime_ns != entry["mtime_ns"]:
                    changed.append(rel)
            elif st.st_mtime_ns != entry["mtime_ns"] or st.st_size != entry["size"]:
                if sha256_file(p) != entry.get("sha256"):
                    changed.append(rel)
        return changed

    def file_hash(self, node: Node, rel: str) -> str:
        return sha256_file(self.workspace(node.id) / rel)
