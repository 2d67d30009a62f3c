"""The command line: user mistakes give a clear message and exit 2, never a traceback."""

from __future__ import annotations

import json

from conftest import read_summary, run_cli

from speedrunner.cli import main


def test_unknown_group_option_lists_the_choices(capsys):
    assert main(["run", "scaffold=bogus"]) == 2
    err = capsys.readouterr().err
    assert "Available options in 'scaffold'" in err
    for name in ("flat", "tree", "forest", "aide", "multi_aide"):
        assert name in err
    assert "Traceback" not in err


def test_unknown_key_fails_cleanly(capsys):
    assert main(["run", "budget.bogus=1"]) == 2
    err = capsys.readouterr().err
    assert "budget.bogus" in err and "Traceback" not in err


def test_missing_scripted_path_is_named(capsys):
    assert main(["run", "model=scripted"]) == 2
    err = capsys.readouterr().err
    assert "model.path" in err and "Traceback" not in err


def test_malformed_task_names_file_and_field(tmp_path, capsys):
    task = tmp_path / "tasks" / "broken"
    (task / "template").mkdir(parents=True)
    (task / "task.yaml").write_text(
        "name: broken\ndescription: x\ncommand: ['{python}', 'a.py']\nmetric: {name: t, direction: down}\n"
        "parsers: [{pattern: 't=(?P<t>[0-9.]+)'}]\n")
    assert main(["run", f"task_paths=[{tmp_path / 'tasks'}]", "task.id=broken", f"run_dir={tmp_path / 'r'}"]) == 2
    err = capsys.readouterr().err
    assert str(task / "task.yaml") in err.replace("\n", "") and "metric.direction" in err
    assert "Traceback" not in err
    assert not (tmp_path / "r" / "journal.jsonl").exists()


def test_unknown_task_lists_known_ones(capsys):
    assert main(["run", "task.id=nope"]) == 2
    err = capsys.readouterr().err
    assert "unknown task 'nope'" in err and "collatz" in err


def test_tasks_lists_collatz(capsys):
    assert main(["tasks"]) == 0
    assert "collatz" in capsys.readouterr().out


def test_cfg_prints_the_resolved_config(capsys):
    assert main(["run", "--cfg", "scaffold=multi_aide", "budget.max_nodes=8"]) == 0
    out = capsys.readouterr().out
    assert "n_branch: 3" in out and "max_nodes: 8" in out and "debug_prob: 0.5" in out


def test_run_refuses_an_existing_run_dir(tmp_path):
    run_dir = tmp_path / "r"
    assert run_cli("run", "task=collatz", "model=null", "budget.max_nodes=1", f"run_dir={run_dir}").returncode == 0
    p = run_cli("run", "task=collatz", "model=null", "budget.max_nodes=1", f"run_dir={run_dir}")
    assert p.returncode == 2 and "resume" in p.stderr


def test_oracle_run_from_the_command_line(tmp_path):
    run_dir = tmp_path / "r"
    p = run_cli("run", "task=collatz", "model=oracle", "scaffold=aide", "budget.max_nodes=3", f"run_dir={run_dir}")
    assert p.returncode == 0, p.stderr
    # one line per node event, then the summary table and where to look
    assert "v_0" in p.stdout and "draft of v_0" in p.stdout and "speedup" in p.stdout
    assert str(run_dir) in p.stdout
    s = read_summary(run_dir)
    assert s["task"] == "collatz" and s["model"] == "oracle" and s["scaffold"] == "aide" and s["speedup"] > 1
    for key in ("n_nodes", "n_valid", "baseline_metric", "best_metric", "best_node", "speedup"):
        assert key in s
    assert (run_dir / "config.yaml").read_text().startswith("# speedrunner run configuration")


def test_a_grid_runs_every_combination_into_one_folder_that_report_reads(tmp_path):
    grid = tmp_path / "grid"
    p = run_cli("run", "-m", "task=collatz", "model=oracle,null", "scaffold=tree", "budget.max_nodes=1",
                "hints=[],[1]", "reeval.runs=0", f"run_dir={grid}")
    assert p.returncode == 0, p.stdout + p.stderr
    runs = sorted(d.name for d in grid.iterdir() if (d / "summary.json").exists())
    assert len(runs) == 4, runs
    models = sorted(json.loads((grid / r / "summary.json").read_text())["model"] for r in runs)
    hints = sorted(str(json.loads((grid / r / "summary.json").read_text())["hints"]) for r in runs)
    assert models == ["null", "null", "oracle", "oracle"] and hints == ["[1]", "[1]", "[]", "[]"]
    p = run_cli("report", str(grid), "--out", str(tmp_path / "rep"), "--no-plots")
    assert p.returncode == 0, p.stderr
    data = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert len(data["runs"]) == 4
