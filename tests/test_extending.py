"""A user adds a coder and an ideator with a Python file and a config file, no change to speedrunner."""

from __future__ import annotations

import json
import textwrap

from conftest import read_summary, run_cli, variant


def test_user_coder_and_ideator_from_a_config_dir(tmp_path, script_file):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "my_agents.py").write_text(textwrap.dedent('''
        from speedrunner.agents.coders.wholefile import WholeFileCoder
        from speedrunner.agents.ideators.base import Idea, Ideator

        class ShoutingCoder(WholeFileCoder):
            name = "shouting"
            def instructions(self):
                return "SHOUTING CODER. " + super().instructions()

        class FixedIdeator(Ideator):
            name = "fixed"
            def __init__(self, idea: str = "try memoisation"):
                self.idea = idea
            def propose(self, ctx, agent):
                return Idea(summary=self.idea, hypothesis="a fixed idea", text=f"Idea: {self.idea}")
    '''))
    conf = tmp_path / "conf"
    (conf / "coder").mkdir(parents=True)
    (conf / "ideator").mkdir(parents=True)
    (conf / "coder" / "shouting.yaml").write_text("name: shouting\ncls: my_agents:ShoutingCoder\nmax_retries: 1\n")
    (conf / "ideator" / "fixed.yaml").write_text("name: fixed\ncls: my_agents:FixedIdeator\n")
    script = script_file([variant(500)])
    run_dir = tmp_path / "run"
    p = run_cli("run", "--config-dir", str(conf), "task=collatz", "coder=shouting", "ideator=fixed", "model=scripted",
                f"model.path={script}", "scaffold=tree", "budget.max_nodes=1", f"run_dir={run_dir}",
                env={"PYTHONPATH": str(pkg)})
    assert p.returncode == 0, p.stderr
    assert read_summary(run_dir)["best_metric"] == 500
    transcript = json.loads((run_dir / "nodes" / "v_1" / "transcript.json").read_text())
    prompt = transcript[0]["messages"][1]["content"]
    assert "SHOUTING CODER." in prompt and "Idea: try memoisation" in prompt
    meta = json.loads((run_dir / "nodes" / "v_1" / "meta.json").read_text())
    assert meta["summary"] == "try memoisation"


def test_bad_cls_is_a_clear_error(tmp_path):
    conf = tmp_path / "conf" / "coder"
    conf.mkdir(parents=True)
    (conf / "broken.yaml").write_text("name: broken\ncls: no_such_module:Nope\n")
    p = run_cli("run", "--config-dir", str(tmp_path / "conf"), "task=collatz", "coder=broken", f"run_dir={tmp_path / 'r'}")
    assert p.returncode == 2 and "coder.cls" in p.stderr and "Traceback" not in p.stderr


def test_a_crashing_user_coder_ends_the_node_not_the_run(tmp_path, script_file):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "bad_coder.py").write_text(
        "from speedrunner.agents.coders.wholefile import WholeFileCoder\n"
        "class BadCoder(WholeFileCoder):\n"
        "    name = 'bad'\n"
        "    def apply(self, text, files, protected):\n"
        "        raise KeyError('bug in the user coder')\n")
    conf = tmp_path / "conf" / "coder"
    conf.mkdir(parents=True)
    (conf / "bad.yaml").write_text("name: bad\ncls: bad_coder:BadCoder\nmax_retries: 1\n")
    run_dir = tmp_path / "run"
    p = run_cli("run", "--config-dir", str(tmp_path / "conf"), "task=collatz", "coder=bad", "model=scripted",
                f"model.path={script_file([variant(500)])}", "scaffold=tree", "budget.max_nodes=2",
                f"run_dir={run_dir}", env={"PYTHONPATH": str(pkg)})
    assert p.returncode == 0, p.stderr
    s = read_summary(run_dir)
    assert s["n_nodes"] == 2 and s["n_buggy"] == 2
    assert "KeyError" in (run_dir / "nodes" / "v_1" / "result.json").read_text()
