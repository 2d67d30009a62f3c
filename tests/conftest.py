"""Shared fixtures: running the CLI in-process or as a real subprocess, and scripted-model files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent


def variant(runtime_ms: float | None, *, crash: bool = False, answer: int = 77031, tag: str = "") -> str:
    """A whole-file reply that rewrites collatz's solve.py to print a fixed runtime (or crash).

    Fixed runtimes make the search's decisions deterministic, so tests can assert the exact tree."""
    body = [f"# variant {tag}".rstrip(), "import sys"]
    if crash:
        body.append('sys.exit("boom: this variant crashes")')
    else:
        body += [f'print("answer: {answer} (chain length 351)")', f'print("runtime_ms: {runtime_ms}")']
    code = "\n".join(body) + "\n"
    return f"Rewrite solve.py.\n\n### File: solve.py\n```python\n{code}```\n"


@pytest.fixture
def fixed_collatz(tmp_path) -> list[str]:
    """Overrides for a copy of the collatz task whose baseline prints a fixed runtime (1000 ms), so
    that no decision of the search depends on how fast this machine runs the real template."""
    import shutil

    from speedrunner.tasks.registry import BUILTIN_ROOT

    dst = tmp_path / "tasks" / "collatz_fixed"
    shutil.copytree(BUILTIN_ROOT / "collatz", dst)
    code = variant(1000).split("```python\n", 1)[1].rsplit("```", 1)[0]
    (dst / "template" / "solve.py").write_text(code)
    return ["task=collatz", f"task_paths=[{tmp_path / 'tasks'}]", "task.id=collatz_fixed"]


@pytest.fixture
def script_file(tmp_path):
    def make(responses: list[str], name: str = "script.yaml") -> Path:
        p = tmp_path / name
        p.write_text(yaml.safe_dump({"responses": responses}))
        return p

    return make


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    full_env = dict(os.environ)
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "speedrunner", *args], capture_output=True, text=True,
                          env=full_env, timeout=timeout, cwd=str(REPO))


def read_summary(run_dir: Path) -> dict:
    return json.loads((Path(run_dir) / "summary.json").read_text())


def read_tree(run_dir: Path) -> dict[int, dict]:
    """node id -> (parent, operator, status, metric) from the node folders."""
    out = {}
    for d in sorted((Path(run_dir) / "nodes").glob("v_*")):
        meta = json.loads((d / "meta.json").read_text())
        res = json.loads((d / "result.json").read_text()) if (d / "result.json").exists() else {}
        out[meta["id"]] = {"parent": meta["parent"], "operator": meta["operator"], "status": res.get("status"),
                           "metric": res.get("metric"), "bug_depth": meta["bug_depth"]}
    return out
