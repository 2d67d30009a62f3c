"""Budget caps stop a run cleanly and a raised cap resumes it; a finished run replays from its cache."""

from __future__ import annotations

import json

from conftest import read_summary, read_tree, run_cli, variant
from llm_fake_server import FakeLLMServer

from speedrunner.workspace.journal import read_events

X = None
SCRIPT = [X, 900, X, 850, 800, X, 790, 780]


def _scripted(tmp_path, script_file, fixed_collatz, run_dir, *extra):
    script = script_file([variant(r, crash=r is None, tag=str(i)) for i, r in enumerate(SCRIPT)])
    return run_cli("run", *fixed_collatz, "scaffold=aide", "model=scripted", f"model.path={script}", "coder=wholefile",
                   "budget.max_nodes=8", "reeval.runs=0", f"run_dir={run_dir}", *extra)


def shape(tree):
    return {i: (n["parent"], n["operator"], n["status"], n["metric"]) for i, n in tree.items()}


def test_a_call_cap_stops_cleanly_and_a_raised_cap_resumes(tmp_path, script_file, fixed_collatz):
    ref = tmp_path / "ref"
    assert _scripted(tmp_path, script_file, fixed_collatz, ref).returncode == 0
    run_dir = tmp_path / "capped"
    p = _scripted(tmp_path, script_file, fixed_collatz, run_dir, "budget.max_llm_calls=3")
    assert p.returncode == 0, p.stderr
    s = read_summary(run_dir)
    assert s["status"] == "stopped" and "budget.max_llm_calls" in s["stop_reason"]
    assert s["llm_calls"] == 3 and s["n_nodes"] == 3
    events = read_events(run_dir / "journal.jsonl")
    assert events[-1]["event"] == "run_stopped" and "max_llm_calls" in events[-1]["reason"]
    p = run_cli("resume", str(run_dir), "budget.max_llm_calls=100")
    assert p.returncode == 0, p.stderr
    assert read_summary(run_dir)["status"] == "finished"
    assert shape(read_tree(run_dir)) == shape(read_tree(ref))


def test_replay_reaches_the_same_tree_from_the_cache_with_no_server(tmp_path, fixed_collatz):
    replies = [{"content": variant(r, crash=r is None, tag=str(i))} for i, r in enumerate(SCRIPT)]
    run_dir = tmp_path / "run"
    with FakeLLMServer(script=replies, fallback={"content": variant(990, tag="x")}) as srv:
        p = run_cli("run", *fixed_collatz, "model=openai_compatible", f"model.base_url={srv.base_url}",
                    "model.name=fake", "model.api_key_env=FAKE_PROVIDER_API_KEY", "model.input_usd_per_mtok=1.0",
                    "model.output_usd_per_mtok=2.0", "scaffold=aide", "budget.max_nodes=6", "coder=wholefile",
                    "reeval.runs=0", f"run_dir={run_dir}", env={"FAKE_PROVIDER_API_KEY": "sk-test"}, timeout=180)
    assert p.returncode == 0, p.stdout + p.stderr
    # the server is gone, and no key is set: the replay must answer every call from the cache
    out = tmp_path / "replayed"
    p = run_cli("replay", str(run_dir), "--out", str(out), env={"FAKE_PROVIDER_API_KEY": ""}, timeout=180)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "reached the same tree" in p.stdout
    calls = [e for e in read_events(out / "journal.jsonl") if e["event"] == "llm_call"]
    assert calls and all(e.get("cached") for e in calls)
    assert read_summary(out)["usd"] == 0.0
    assert {i: (n["parent"], n["operator"]) for i, n in read_tree(out).items()} == \
        {i: (n["parent"], n["operator"]) for i, n in read_tree(run_dir).items()}
    assert json.loads((out / "nodes" / "v_1" / "result.json").read_text())["status"] == \
        json.loads((run_dir / "nodes" / "v_1" / "result.json").read_text())["status"]
