"""End to end: ``speedrunner run ... model=openai_compatible`` as a subprocess against the fake server.

The server answers with whole-file edits of solve.py that print the agent's whole environment; a key
planted in the environment must reach the server (Authorization header) and nowhere else: not the
agent's environment, not a single file of the run folder."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import read_summary, run_cli
from llm_fake_server import FakeLLMServer

KEY = "sk-e2e-planted-KEY-9f8e7d6c5b4a3210"


def env_dumping_variant(runtime_ms: float, tag: str) -> str:
    code = (f"# variant {tag}\nimport os\n"
            "for k, v in sorted(os.environ.items()):\n    print(f'ENV {k}={v}')\n"
            'print("answer: 77031 (chain length 351)")\n'
            f'print("runtime_ms: {runtime_ms}")\n')
    return f"Rewrite solve.py.\n\n### File: solve.py\n```python\n{code}```\n"


def test_run_with_an_openai_compatible_server(tmp_path, fixed_collatz):
    run_dir = tmp_path / "run"
    replies = [{"content": env_dumping_variant(500, "1"), "reasoning": "I will print the environment."},
               {"content": env_dumping_variant(250, "2"), "usage": {"prompt_tokens": 1000, "completion_tokens": 1000}}]
    with FakeLLMServer(script=replies, fallback={"content": env_dumping_variant(900, "x")}) as srv:
        r = run_cli("run", *fixed_collatz, "model=openai_compatible", f"model.base_url={srv.base_url}",
                    "model.name=fake", "model.api_key_env=FAKE_PROVIDER_API_KEY", "model.input_usd_per_mtok=1.0",
                    "model.output_usd_per_mtok=2.0", "scaffold=tree", "budget.max_nodes=2", "coder=wholefile",
                    f"run_dir={run_dir}", env={"FAKE_PROVIDER_API_KEY": KEY}, timeout=120)
        reqs = srv.chat_requests()
    assert r.returncode == 0, r.stdout + r.stderr
    s = read_summary(run_dir)
    assert s["status"] == "finished" and s["n_nodes"] == 2 and s["n_valid"] == 2
    assert s["best_metric"] == 250.0 and s["llm_calls"] == 2
    assert s["tokens_in"] >= 1000 and s["usd"] >= (1000 * 1.0 + 1000 * 2.0) / 1e6
    assert len(reqs) == 2 and all(q["headers"]["Authorization"] == f"Bearer {KEY}" for q in reqs)
    assert all(q["body"]["model"] == "fake" for q in reqs)

    calls = [json.loads(line) for line in (run_dir / "journal.jsonl").read_text().splitlines()]
    calls = [e for e in calls if e.get("event") == "llm_call"]
    assert [c["provider_model"] for c in calls] == ["fake", "fake"]
    assert calls[0].get("has_reasoning") is True

    stdout = (run_dir / "nodes" / "v_1" / "stdout.log").read_text()
    assert "ENV PATH=" in stdout  # the agent's code did dump its environment
    leaks = [str(p.relative_to(run_dir)) for p in Path(run_dir).rglob("*")
             if p.is_file() and (KEY.encode() in p.read_bytes() or KEY[-8:].encode() in p.read_bytes())]
    assert leaks == []
    assert KEY not in r.stdout + r.stderr


def test_failing_provider_does_not_stop_the_run(tmp_path, fixed_collatz):
    run_dir = tmp_path / "run"
    with FakeLLMServer(fallback={"status": 401, "error_message": f"Incorrect API key provided: {KEY}"}) as srv:
        r = run_cli("run", *fixed_collatz, "model=openai_compatible", f"model.base_url={srv.base_url}",
                    "model.name=fake", "model.api_key_env=FAKE_PROVIDER_API_KEY", "scaffold=tree",
                    "budget.max_nodes=1", "coder=wholefile", f"run_dir={run_dir}",
                    env={"FAKE_PROVIDER_API_KEY": KEY}, timeout=120)
        n = len(srv.chat_requests())
    assert r.returncode == 0, r.stdout + r.stderr
    assert n == 1  # fail fast: no retry of a 401
    s = read_summary(run_dir)
    assert s["n_nodes"] == 1 and s["n_buggy"] == 1
    journal = (run_dir / "journal.jsonl").read_text()
    assert "Incorrect API key provided" in journal and KEY not in journal
