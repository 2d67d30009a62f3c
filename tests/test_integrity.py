"""A node cannot quietly change what the task protects; risky changes are flagged for a human."""

from __future__ import annotations

import json

import pytest
import yaml
from conftest import read_tree, variant

from speedrunner.runner import build, compose


def _task_with_guards(tmp_path, fixed_collatz):
    task_dir = tmp_path / "tasks" / "collatz_fixed"
    data = tmp_path / "data.txt"
    data.write_text("the protected data\n")
    spec = yaml.safe_load((task_dir / "task.yaml").read_text())
    spec["protected"] = [str(data)]
    spec["suspicious"] = [{"pattern": r"data\.txt", "message": "touches the data file"},
                          {"pattern": r"perf_counter", "message": "touches the timer"}]
    (task_dir / "task.yaml").write_text(yaml.safe_dump(spec))
    return data


def _reply(code: str) -> str:
    return f"### File: solve.py\n```python\n{code}```\n"


@pytest.mark.parametrize("sandbox", ["auto", "none"])
def test_a_run_that_changes_protected_data_is_invalid(tmp_path, fixed_collatz, script_file, sandbox):
    """With the filesystem sandbox the write is refused (the node crashes); without it, the change is
    detected after the run. Either way the data is intact or the node is invalid, and the lie never wins."""
    from speedrunner.execution.local import filesystem_sandbox_available

    if sandbox == "auto" and not filesystem_sandbox_available():
        pytest.skip("mount/PID namespaces are not available here")
    data = _task_with_guards(tmp_path, fixed_collatz)
    tamper = (f"open({str(data)!r}, 'a').write('poisoned\\n')\n"
              "print('answer: 77031 (chain length 351)')\nprint('runtime_ms: 10')\n")
    honest = variant(500).split("```python\n", 1)[1].rsplit("```", 1)[0]
    script = script_file([_reply(tamper), _reply(honest)])
    run_dir = tmp_path / "run"
    cfg = compose([*fixed_collatz, "scaffold=flat", "model=scripted", f"model.path={script}", "coder=wholefile",
                   "budget.max_nodes=2", f"run_dir={run_dir}", f"executor.sandbox={sandbox}"])
    build(cfg, run_dir).run()
    tree = read_tree(run_dir)
    result = json.loads((run_dir / "nodes" / "v_1" / "result.json").read_text())
    if sandbox == "auto":
        assert tree[1]["status"] == "buggy" and "Read-only file system" in result["reason"]
        assert data.read_text() == "the protected data\n"
    else:
        assert tree[1]["status"] == "invalid"
        assert "(protected)" in result["reason"] and str(data) in result["reason"]
    assert tree[2]["status"] == "valid"
    assert "touches the data file" in " ".join(result["flags"])
    assert json.loads((run_dir / "summary.json").read_text())["best_node"] == 2  # the 10 ms lie does not win


def test_suspicious_changes_are_flagged_not_invalidated(tmp_path, fixed_collatz, script_file):
    _task_with_guards(tmp_path, fixed_collatz)
    code = ("import time\nt = time.perf_counter()\n"
            "print('answer: 77031 (chain length 351)')\nprint('runtime_ms: 400')\n")
    run_dir = tmp_path / "run"
    cfg = compose([*fixed_collatz, "scaffold=flat", "model=scripted", f"model.path={script_file([_reply(code)])}",
                   "coder=wholefile", "budget.max_nodes=1", f"run_dir={run_dir}"])
    build(cfg, run_dir).run()
    result = json.loads((run_dir / "nodes" / "v_1" / "result.json").read_text())
    assert result["status"] == "valid"
    assert any("touches the timer" in f and "perf_counter" in f for f in result["flags"])


def test_reported_time_above_the_harness_clock_is_invalid(tmp_path, fixed_collatz, script_file):
    task_dir = tmp_path / "tasks" / "collatz_fixed"
    spec = yaml.safe_load((task_dir / "task.yaml").read_text())
    spec["valid_if"] = spec["valid_if"] + ["runtime_ms <= wall_ms"]
    (task_dir / "task.yaml").write_text(yaml.safe_dump(spec))
    # the fixed-runtime variant claims 5000 ms but finishes in a fraction of that
    run_dir = tmp_path / "run"
    cfg = compose([*fixed_collatz, "scaffold=flat", "model=scripted", f"model.path={script_file([variant(5000)])}",
                   "coder=wholefile", "budget.max_nodes=1", f"run_dir={run_dir}"])
    build(cfg, run_dir).run()
    result = json.loads((run_dir / "nodes" / "v_1" / "result.json").read_text())
    assert result["status"] == "invalid" and "runtime_ms = 5000 fails runtime_ms <= wall_ms" in result["reason"]


def test_a_node_cannot_forge_its_own_reevaluation(tmp_path, fixed_collatz, script_file):
    from speedrunner.execution.local import filesystem_sandbox_available

    if not filesystem_sandbox_available():
        import pytest

        pytest.skip("mount/PID namespaces are not available here")
    forge = ("import json, os\n"
             "run = os.path.abspath('../../..')\n"
             "try:\n"
             "    os.makedirs(run + '/reeval', exist_ok=True)\n"
             "    json.dump({'1': {'valid': True, 'metric_mean': 1.0, 'reasons': [], 'runs': []}},\n"
             "              open(run + '/reeval/results.json', 'w'))\n"
             "    print('FORGED')\n"
             "except OSError as e:\n    print('REFUSED', e)\n"
             "print('answer: 77031 (chain length 351)')\nprint('runtime_ms: 600')\n")
    run_dir = tmp_path / "run"
    cfg = compose([*fixed_collatz, "scaffold=flat", "model=scripted", f"model.path={script_file([_reply(forge)])}",
                   "coder=wholefile", "budget.max_nodes=1", f"run_dir={run_dir}", "reeval.runs=1"])
    build(cfg, run_dir).run()
    assert "REFUSED" in (run_dir / "nodes" / "v_1" / "stdout.log").read_text()
    s = json.loads((run_dir / "summary.json").read_text())
    assert s["reeval"]["nodes"]["1"]["metric_mean"] == 600
