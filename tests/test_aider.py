"""``coder=aider``: the command line, the model mapping, the result and its failures (with a stand-in
``aider`` program), and end to end with the real aider-chat in its own venv against the loopback
chat-completions server (tests/llm_fake_server.py)."""

from __future__ import annotations

import io
import json
import os
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import read_summary, run_cli
from llm_fake_server import FakeLLMServer

from speedrunner.agents.coders import aider as A
from speedrunner.agents.coders.aider import AiderCoder, AiderModel, AiderUnavailable
from speedrunner.agents.coders.base import EditError
from speedrunner.agents.listing import render_files
from speedrunner.core.errors import UserError
from speedrunner.llm.provider import ModelConfig
from speedrunner.llm.secrets import Secret
from speedrunner.search.loop import CODER_PROMPT

KEY = "sk-aider-planted-KEY-0a1b2c3d4e5f6789"
SOLVE = 'import sys\nprint("answer: 77031 (chain length 351)")\nprint("runtime_ms: 1000")\n'


def compat(**kw) -> ModelConfig:
    cfg = {"name": "fake", "provider": "openai_compatible", "base_url": "http://127.0.0.1:9/v1",
           "api_key_env": "FAKE_KEY", "temperature": 0.7, "max_tokens": 4096, "input_usd_per_mtok": 1.0,
           "output_usd_per_mtok": 2.0, "check_model": "off"}
    cfg.update(kw)
    return ModelConfig.from_dict(cfg)


def a_task(tmp_path: Path, protected: tuple[str, ...] = ("NOTICE.txt",)) -> SimpleNamespace:
    tpl = tmp_path / "template"
    tpl.mkdir(exist_ok=True)
    (tpl / "solve.py").write_text(SOLVE)
    (tpl / "NOTICE.txt").write_text("the evaluation rules\n")
    (tpl / "README.md").write_text("not editable, not protected\n")
    return SimpleNamespace(editable=["*.py"], protected=list(protected), template_dir=tpl, template_include=["*"])


def messages(files: dict[str, str], *feedback: str) -> list[dict[str, str]]:
    prompt = CODER_PROMPT.format(job="Make it faster.", idea="", history="(none yet)", node="v_0",
                                 files=render_files(files), instructions=A.INSTRUCTIONS)
    out = [{"role": "system", "content": "# Task\nCollatz, faster."}, {"role": "user", "content": prompt}]
    for f in feedback:
        out += [{"role": "assistant", "content": "(earlier run)"}, {"role": "user", "content": f}]
    return out


FAKE_AIDER = '''#!{python}
"""A stand-in for aider: does what behavior.json beside its venv says, and records how it was called."""
import json, os, sys, time, pathlib
venv = pathlib.Path(__file__).resolve().parent.parent
b = json.loads((venv / "behavior.json").read_text())
argv = sys.argv[1:]
opt = lambda name: argv[argv.index(name) + 1] if name in argv else None
files = argv[argv.index("--") + 1:] if "--" in argv else []
msg = opt("--message") or pathlib.Path(opt("--message-file")).read_text()
(venv / "calls.jsonl").open("a").write(json.dumps({{"argv": argv, "env": dict(os.environ), "cwd": os.getcwd(),
    "files": {{f: open(f).read() for f in files}}, "message": msg, "listing": sorted(os.listdir("."))}}) + "\\n")
open(opt("--chat-history-file"), "a").write("# aider chat started\\n\\n#### " + msg[:40] + "\\n\\nfake aider reply\\n")
for _ in range(b.get("calls", 1)):
    print("Tokens: 2.2k sent, 32 received. Cost: $0.01 message, $0.01 session.", flush=True)
    if b.get("events", True):
        open(opt("--analytics-log"), "a").write(json.dumps({{"event": "message_send", "properties":
            {{"prompt_tokens": 2201, "completion_tokens": 32, "cost": 0.01, "total_cost": 0.01}}}}) + "\\n")
for path, text in b.get("write", {{}}).items():
    pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
    pathlib.Path(path).write_text(text)
for path in b.get("delete", []):
    os.remove(path)
if b.get("say"):
    print(b["say"], flush=True)
if b.get("stderr"):
    sys.stderr.write(b["stderr"])
time.sleep(b.get("sleep", 0))
sys.exit(b.get("exit", 0))
'''


@pytest.fixture
def fake_venv(tmp_path):
    """A venv holding the stand-in aider; ``set(**behavior)`` says what the next run does."""
    venv = tmp_path / "fake-venv"
    (venv / "bin").mkdir(parents=True)
    exe = venv / "bin" / "aider"
    exe.write_text(FAKE_AIDER.format(python=sys.executable))
    exe.chmod(0o755)
    (venv / A.MARKER).write_text(json.dumps({"version": A.AIDER_VERSION}))

    def set_behavior(**b):
        (venv / "behavior.json").write_text(json.dumps(b))
        return venv

    def calls():
        p = venv / "calls.jsonl"
        return [json.loads(line) for line in p.read_text().splitlines()] if p.exists() else []

    set_behavior()
    return SimpleNamespace(path=venv, set=set_behavior, calls=calls)


def driver(tmp_path, venv, **kw) -> AiderModel:
    kw.setdefault("scratch_dir", str(tmp_path / "scratch"))
    return AiderModel(kw.pop("mc", compat()), kw.pop("task", a_task(tmp_path)), venv=str(venv),
                      secrets={"OPENAI_API_KEY": Secret(KEY, "FAKE_KEY")}, **kw)


# ------------------------------------------------------------------------------------ command and mapping
def test_the_command_line_runs_aider_non_interactively_and_keeps_the_key_off_it(tmp_path, fake_venv, monkeypatch):
    monkeypatch.setenv("AIDER_AUTO_COMMITS", "true")  # the user's aider settings must not reach the run
    monkeypatch.setenv("OPENAI_API_BASE", "http://elsewhere.invalid/v1")
    comp = driver(tmp_path, fake_venv.path).complete(messages({"solve.py": SOLVE}))
    (call,) = fake_venv.calls()
    argv, env = call["argv"], call["env"]
    for flag in ("--yes-always", "--no-git", "--no-auto-commits", "--no-dirty-commits", "--no-pretty", "--no-stream",
                 "--no-fancy-input", "--no-analytics", "--no-check-update", "--no-show-release-notes", "--no-browser",
                 "--disable-playwright", "--no-detect-urls", "--no-suggest-shell-commands", "--no-auto-lint",
                 "--no-auto-test", "--no-restore-chat-history", "--no-show-model-warnings"):
        assert flag in argv, flag
    opts = dict(zip(argv, argv[1:], strict=False))
    assert opts["--model"] == "openai/fake" and opts["--weak-model"] == "openai/fake"
    assert opts["--openai-api-base"] == "http://127.0.0.1:9/v1"
    assert opts["--edit-format"] == "diff" and opts["--map-tokens"] == "0"
    assert opts["--read"] == "NOTICE.txt"
    assert argv[argv.index("--") + 1:] == ["solve.py"]
    assert "# Task\nCollatz, faster." in opts["--message"] and "The files are in the chat: solve.py." in opts["--message"]
    assert "### File: solve.py" not in opts["--message"]  # the listing is replaced: aider has the files
    assert not any(KEY in a for a in argv)
    assert env["OPENAI_API_KEY"] == KEY and "OPENAI_API_BASE" not in env
    assert not [k for k in env if k.startswith("AIDER_")]
    scratch = Path(opts["--chat-history-file"]).parent
    assert env["HOME"] == str(scratch / "home") and call["cwd"] == str(scratch / "work")
    assert Path(opts["--analytics-log"]).parent == scratch
    assert sorted(call["listing"]) == ["NOTICE.txt", "README.md", "solve.py"]
    assert not any(KEY in v for v in comp.meta.values() if isinstance(v, str)) and KEY not in comp.text
    assert list((tmp_path / "scratch").iterdir()) == []  # the scratch folder is gone after the run


def test_each_call_is_a_fresh_aider_with_its_own_history(tmp_path, fake_venv):
    d = driver(tmp_path, fake_venv.path)
    d.complete(messages({"solve.py": SOLVE}))
    d.complete(messages({"solve.py": SOLVE}))
    first, second = fake_venv.calls()
    h1 = dict(zip(first["argv"], first["argv"][1:], strict=False))["--chat-history-file"]
    h2 = dict(zip(second["argv"], second["argv"][1:], strict=False))["--chat-history-file"]
    assert h1 != h2 and first["env"]["HOME"] != second["env"]["HOME"]


@pytest.mark.parametrize("fmt", ["diff", "whole", "udiff"])
def test_the_edit_format_is_selectable(tmp_path, fake_venv, fmt):
    driver(tmp_path, fake_venv.path, edit_format=fmt).complete(messages({"solve.py": SOLVE}))
    argv = fake_venv.calls()[0]["argv"]
    assert argv[argv.index("--edit-format") + 1] == fmt
    assert AiderCoder(edit_format=fmt).options["edit_format"] == fmt


def test_an_unknown_edit_format_is_refused():
    with pytest.raises(UserError, match="coder.edit_format"):
        AiderCoder(edit_format="architect")


def test_model_mapping_per_provider():
    m = A.map_model(compat())
    assert m.route == "openai/fake" and m.secret_env == {"OPENAI_API_KEY": "FAKE_KEY"}
    assert m.extra_params == {"temperature": 0.7, "max_tokens": 4096}
    assert m.metadata["openai/fake"]["input_cost_per_token"] == pytest.approx(1e-6)

    o = A.map_model(ModelConfig.from_dict({"name": "o3-mini", "provider": "openai", "api_key_env": "MY_OPENAI",
                                           "params": {"reasoning_effort": "medium"}}))
    assert o.route == "openai/o3-mini" and "--openai-api-base" not in o.args
    assert o.secret_env == {"OPENAI_API_KEY": "MY_OPENAI"} and o.extra_params == {"reasoning_effort": "medium"}

    c = A.map_model(ModelConfig.from_dict({"name": "claude-sonnet-4-5-20250929", "provider": "anthropic",
                                           "api_key_env": "ANTHROPIC_API_KEY"}))
    assert c.route == "anthropic/claude-sonnet-4-5-20250929" and c.secret_env == {"ANTHROPIC_API_KEY": "ANTHROPIC_API_KEY"}

    z = A.map_model(ModelConfig.from_dict({"name": "dep", "provider": "azure", "api_key_env": "AZ",
                                           "base_url": "https://r.openai.azure.com", "api_version": "2024-12-01"}))
    assert z.env == {"AZURE_API_BASE": "https://r.openai.azure.com", "AZURE_API_VERSION": "2024-12-01"}
    assert z.secret_env == {"AZURE_API_KEY": "AZ"}

    b = A.map_model(ModelConfig.from_dict({"name": "us.anthropic.x", "provider": "bedrock", "credentials": {
        "aws_access_key_id": "AWS_ACCESS_KEY_ID", "aws_secret_access_key": "AWS_SECRET_ACCESS_KEY"}}))
    assert b.route == "bedrock/us.anthropic.x"
    assert b.secret_env == {"AWS_ACCESS_KEY_ID": "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY": "AWS_SECRET_ACCESS_KEY"}


def test_sampling_goes_to_a_settings_file_and_no_file_holds_the_key(tmp_path, fake_venv):
    driver(tmp_path, fake_venv.path, keep_scratch=True).complete(messages({"solve.py": SOLVE}))
    argv = fake_venv.calls()[0]["argv"]
    settings = Path(argv[argv.index("--model-settings-file") + 1])
    assert "temperature: 0.7" in settings.read_text() and "aider/extra_params" in settings.read_text()
    scratch = settings.parent
    assert [p for p in scratch.rglob("*") if p.is_file() and KEY in p.read_text(errors="replace")] == []


def test_keys_are_read_when_the_run_is_built(tmp_path, monkeypatch):
    monkeypatch.delenv("FAKE_KEY", raising=False)
    monkeypatch.setenv("SPEEDRUNNER_SECRETS", str(tmp_path / "none.yaml"))
    (tmp_path / "none.yaml").write_text("{}\n")
    with pytest.raises(UserError, match="FAKE_KEY"):
        AiderModel.from_config(compat(), a_task(tmp_path))
    monkeypatch.setenv("FAKE_KEY", KEY)
    d = AiderModel.from_config(compat(), a_task(tmp_path))
    assert repr(d._secrets["OPENAI_API_KEY"]) == "Secret(FAKE_KEY)"
    free = AiderModel.from_config(compat(api_key_env=None), a_task(tmp_path))
    assert free._secrets["OPENAI_API_KEY"].reveal() == "no-key"


# ------------------------------------------------------------------------------------ usage
def test_token_and_cost_report_lines_are_parsed():
    out = textwrap.dedent("""\
        Tokens: 2.2k sent, 32 received. Cost: $0.0012 message, $0.0012 session.
        Applied edit to solve.py
        Tokens: 15k sent, 1.5k cache write, 3.0k cache hit, 1.1k received.
        Cost: $0.05 message, $0.0512 session.
        Tokens: 900 sent, 7 received.
        """)
    u = A.parse_report(out)
    assert (u.tokens_in, u.tokens_out, u.calls) == (2200 + 15000 + 900, 32 + 1100 + 7, 3)
    assert u.usd == pytest.approx(0.0512)
    assert A.parse_report("no report here").calls == 0


def test_exact_counts_come_from_the_event_log(tmp_path):
    log = tmp_path / "events.jsonl"
    log.write_text("\n".join(json.dumps(e) for e in [
        {"event": "launched", "properties": {}},
        {"event": "message_send", "properties": {"prompt_tokens": 2201, "completion_tokens": 32, "cost": 0.5}},
        {"event": "message_send", "properties": {"prompt_tokens": 1000, "completion_tokens": 8, "cost": 0}}]) + "\nnot json\n")
    u = A.parse_events(log)
    assert (u.tokens_in, u.tokens_out, u.calls, u.usd, u.source) == (3201, 40, 2, 0.5, "events")
    assert A.parse_events(tmp_path / "missing.jsonl") is None


def test_usage_and_cost_of_a_run(tmp_path, fake_venv):
    fake_venv.set(calls=2, write={"solve.py": SOLVE.replace("1000", "500")})
    comp = driver(tmp_path, fake_venv.path).complete(messages({"solve.py": SOLVE}))
    assert (comp.usage.tokens_in, comp.usage.tokens_out) == (2 * 2201, 2 * 32)
    assert comp.usage.usd == pytest.approx((2 * 2201 * 1.0 + 2 * 32 * 2.0) / 1e6)  # the config's prices
    assert comp.meta["usd_source"] == "config" and comp.meta["aider_calls"] == 2 and comp.meta["aider_usd"] == 0.02
    fake_venv.set(calls=1, events=False, write={"solve.py": SOLVE.replace("1000", "400")})
    comp = driver(tmp_path, fake_venv.path).complete(messages({"solve.py": SOLVE}))
    assert (comp.usage.tokens_in, comp.meta["usage_source"]) == (2200, "report")  # aider's rounded lines


# ------------------------------------------------------------------------------------ results
def test_an_edit_is_taken_and_protected_edits_are_reverted_and_reported(tmp_path, fake_venv):
    fake_venv.set(write={"solve.py": SOLVE.replace("1000", "500"), "NOTICE.txt": "rules changed\n",
                         "README.md": "changed\n", "fast.py": "x = 1\n", ".aider.conf.yml": "yes-always: true\n"})
    comp = driver(tmp_path, fake_venv.path).complete(messages({"solve.py": SOLVE}))
    assert comp.meta["aider_reverted"] == [".aider.conf.yml", "NOTICE.txt", "README.md"]
    assert "reverted: .aider.conf.yml, NOTICE.txt, README.md" in comp.text
    res = AiderCoder().apply(comp.text, {"solve.py": SOLVE}, ["NOTICE.txt"])
    assert res.edits == {"fast.py": "x = 1\n", "solve.py": SOLVE.replace("1000", "500")} and not res.no_change


def test_a_deleted_file_is_a_deletion(tmp_path, fake_venv):
    fake_venv.set(delete=["solve.py"], write={"main.py": SOLVE})
    comp = driver(tmp_path, fake_venv.path).complete(messages({"solve.py": SOLVE}))
    assert AiderCoder().apply(comp.text, {"solve.py": SOLVE}, []).edits == {"main.py": SOLVE, "solve.py": None}


def test_no_edit_ends_the_node_with_aiders_last_words(tmp_path, fake_venv):
    fake_venv.set(say="# 1 SEARCH/REPLACE block failed to match!")
    comp = driver(tmp_path, fake_venv.path).complete(messages({"solve.py": SOLVE}))
    assert comp.meta["aider_status"] == "no_edit" and comp.usage.tokens_in == 2201  # still paid for
    with pytest.raises(EditError, match=r"(?s)aider made no edit to the files it may change \(solve.py\).*failed to match"):
        AiderCoder().apply(comp.text, {"solve.py": SOLVE}, [])


def test_only_protected_edits_is_no_edit(tmp_path, fake_venv):
    fake_venv.set(write={"NOTICE.txt": "x\n"})
    comp = driver(tmp_path, fake_venv.path).complete(messages({"solve.py": SOLVE}))
    with pytest.raises(EditError, match="its edits to files it may not change were reverted: NOTICE.txt"):
        AiderCoder().apply(comp.text, {"solve.py": SOLVE}, ["NOTICE.txt"])


def test_no_change_said_is_a_no_change_node(tmp_path, fake_venv):
    fake_venv.set(say="The code is optimal.\nNO CHANGE")
    comp = driver(tmp_path, fake_venv.path).complete(messages({"solve.py": SOLVE}))
    assert AiderCoder().apply(comp.text, {"solve.py": SOLVE}, []).no_change


def test_a_crash_ends_the_node_with_its_status_and_stderr(tmp_path, fake_venv):
    fake_venv.set(exit=3, stderr="Traceback ...\nlitellm.AuthenticationError: bad key\n", write={"solve.py": "x\n"})
    comp = driver(tmp_path, fake_venv.path).complete(messages({"solve.py": SOLVE}))
    with pytest.raises(EditError, match=r"(?s)aider exited with status 3.*AuthenticationError"):
        AiderCoder().apply(comp.text, {"solve.py": SOLVE}, [])


def test_a_key_echoed_by_aider_is_cut_out(tmp_path, fake_venv):
    fake_venv.set(exit=1, stderr=f"AuthenticationError: Incorrect API key provided: {KEY}\n", say=f"key {KEY[:12]}...")
    comp = driver(tmp_path, fake_venv.path).complete(messages({"solve.py": SOLVE}))
    assert KEY not in comp.text and KEY[:8] not in comp.text and "<FAKE_KEY>" in comp.text
    with pytest.raises(EditError) as e:
        AiderCoder().apply(comp.text, {"solve.py": SOLVE}, [])
    assert KEY[:8] not in str(e.value)


def test_setup_never_deletes_a_folder_that_is_not_a_venv(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(UserError, match="is not a virtual environment"):
        A.setup_venv(tmp_path / "mine", force=True, log=io.StringIO())
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_a_timeout_stops_aider_and_ends_the_node(tmp_path, fake_venv):
    fake_venv.set(sleep=60, write={"solve.py": "x\n"})
    t0 = time.monotonic()
    comp = driver(tmp_path, fake_venv.path, timeout_s=1.5).complete(messages({"solve.py": SOLVE}))
    assert time.monotonic() - t0 < 20
    assert comp.meta["aider_status"] == "timeout" and comp.meta["usage_incomplete"] is True
    assert comp.usage.tokens_in == 2201  # what it reported before it was stopped still counts
    with pytest.raises(EditError, match=r"aider did not finish within 1.5 s \(coder.timeout_s\)"):
        AiderCoder().apply(comp.text, {"solve.py": SOLVE}, [])


def test_a_missing_venv_names_the_setup_command(tmp_path, monkeypatch):
    with pytest.raises(AiderUnavailable, match="speedrunner setup aider"):
        driver(tmp_path, tmp_path / "nowhere").complete(messages({"solve.py": SOLVE}))
    venv = tmp_path / "old"
    (venv / "bin").mkdir(parents=True)
    (venv / A.MARKER).write_text(json.dumps({"version": "0.50.0"}))
    assert A.venv_problem(venv) == f"{venv} holds aider 0.50.0, speedrunner needs {A.AIDER_VERSION}"
    monkeypatch.setenv(A.VENV_ENV, str(tmp_path / "env-venv"))
    assert A.default_venv() == tmp_path / "env-venv"


def test_an_aider_that_cannot_start_names_the_fix(tmp_path, fake_venv):
    (fake_venv.path / "bin" / "aider").write_text("#!/nonexistent/python\n")
    with pytest.raises(AiderUnavailable, match="could not start.*speedrunner setup aider --force"):
        driver(tmp_path, fake_venv.path).complete(messages({"solve.py": SOLVE}))


def test_a_retry_gets_the_feedback_and_fresh_files(tmp_path, fake_venv):
    fake_venv.set(write={"solve.py": SOLVE.replace("1000", "500")})
    driver(tmp_path, fake_venv.path).complete(messages({"solve.py": SOLVE}, "aider made no edit: try again"))
    (call,) = fake_venv.calls()
    assert call["message"].rstrip().endswith("aider made no edit: try again")
    assert call["files"] == {"solve.py": SOLVE}


def test_apply_reads_only_results_and_checks_paths():
    coder = AiderCoder()
    with pytest.raises(EditError, match="expects the result of an aider run"):
        coder.apply("solve.py\n<<<<<<< SEARCH\n=======\n>>>>>>> REPLACE\n", {"solve.py": SOLVE}, [])
    assert coder.apply("NO CHANGE", {"solve.py": SOLVE}, []).no_change
    bad = A.render_result({"status": "edited", "edits": {"/etc/passwd": "x"}})
    with pytest.raises(EditError, match="not a path inside the workspace"):
        coder.apply(bad, {}, [])
    text = AiderCoder.render({"solve.py": SOLVE}, {"solve.py": "print('<think>x</think>')\n"})
    assert "<think>" not in text.split(A.RESULT_MARK)[1]  # the result survives the reasoning filter
    assert coder.apply(text, {"solve.py": SOLVE}, []).edits == {"solve.py": "print('<think>x</think>')\n"}
    assert AiderCoder.render({"a.py": "1"}, {"a.py": "1"}) == "NO CHANGE"


# ------------------------------------------------------------------------------------ wiring
def test_the_factory_gives_the_coder_role_to_aider(tmp_path, monkeypatch):
    from speedrunner.llm.cache import CachingModel, ResponseCache
    from speedrunner.llm.factory import build_role_models
    from speedrunner.llm.ledger import GuardedModel, Ledger
    from speedrunner.llm.oracle import OracleModel

    monkeypatch.setenv("FAKE_KEY", KEY)
    task = a_task(tmp_path)
    model = {"name": "fake", "provider": "openai_compatible", "base_url": "http://127.0.0.1:9/v1",
             "api_key_env": "FAKE_KEY", "input_usd_per_mtok": 0.0, "output_usd_per_mtok": 0.0}
    cfg = {"model": model, "models": {}, "coder": {"name": "aider", "cls": "x:y", "max_retries": 0, "edit_format": "whole"}}
    cache = ResponseCache(tmp_path / "cache.sqlite")
    out = build_role_models(cfg, task, AiderCoder, cache=cache, ledger=Ledger())
    coder = out["coder"]
    assert isinstance(coder, GuardedModel) and isinstance(coder.inner, CachingModel)
    assert isinstance(coder.inner.inner, AiderModel) and coder.inner.inner.edit_format == "whole"
    assert coder.inner.identity["coder"] == "aider" and out["ideator"] is not coder
    replay = build_role_models(cfg, task, AiderCoder, cache=cache, replay=True)["coder"]
    assert replay.strict and replay.identity == coder.inner.identity  # a replay answers from the same cache keys
    tpl = tmp_path / "reference"
    tpl.mkdir()
    (tpl / "solve.py").write_text("print(1)\n")
    task.reference_dir, task.spec_path = tpl, "task.yaml"
    assert isinstance(build_role_models({**cfg, "model": {"name": "oracle"}}, task, AiderCoder)["coder"], OracleModel)
    with pytest.raises(UserError, match="does not start a local llama.cpp server"):
        build_role_models({**cfg, "model": {"name": "gemma", "provider": "local"}}, task, AiderCoder, roles=("coder",))


def test_oracle_with_coder_aider_checks_the_harness_without_aider(tmp_path, fixed_collatz):
    run_dir = tmp_path / "run"
    r = run_cli("run", *fixed_collatz, "model=oracle", "coder=aider", "scaffold=tree", "budget.max_nodes=1",
                "reeval.runs=0", f"run_dir={run_dir}", env={A.VENV_ENV: str(tmp_path / "no-aider")}, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    s = read_summary(run_dir)
    assert s["n_valid"] == 1 and s["coder"] == "aider"


def test_a_run_without_aider_ends_the_node_and_goes_on(tmp_path, fixed_collatz):
    run_dir = tmp_path / "run"
    with FakeLLMServer(fallback={"content": "NO CHANGE"}) as srv:
        r = run_cli("run", *fixed_collatz, "model=openai_compatible", f"model.base_url={srv.base_url}",
                    "model.name=fake", "coder=aider", "scaffold=tree", "budget.max_nodes=2", "reeval.runs=0",
                    f"run_dir={run_dir}", env={A.VENV_ENV: str(tmp_path / "no-aider")}, timeout=120)
        assert srv.chat_requests() == []
    assert r.returncode == 0, r.stdout + r.stderr
    s = read_summary(run_dir)
    assert s["status"] == "finished" and s["n_nodes"] == 2 and s["n_buggy"] == 2
    reason = json.loads((run_dir / "nodes" / "v_1" / "result.json").read_text())["reason"]
    assert "aider is not installed" in reason and "speedrunner setup aider" in reason


def test_setup_check_says_what_is_missing(tmp_path):
    r = run_cli("setup", "aider", "--check", "--venv", str(tmp_path / "none"))
    assert r.returncode == 1 and "not ready" in r.stdout and "does not exist" in r.stdout


# ------------------------------------------------------------------------------------ the real aider
@pytest.fixture(scope="session")
def aider_venv() -> Path:
    """The real aider, installed once into its cached venv ($SPEEDRUNNER_AIDER_VENV or
    ~/.cache/speedrunner/aider-venv), like `speedrunner setup aider`; later sessions reuse it."""
    log = io.StringIO()
    try:
        path, _ = A.setup_venv(A.default_venv(), log=log, timeout_s=900)
    except UserError as e:
        pytest.skip(f"aider-chat=={A.AIDER_VERSION} cannot be installed here: {e}")
    return path


def protected_collatz(fixed_collatz: list[str]) -> list[str]:
    """fixed_collatz plus a protected file, NOTICE.txt."""
    root = Path(fixed_collatz[1].split("=", 1)[1].strip("[]")) / "collatz_fixed"
    (root / "template" / "NOTICE.txt").write_text("the evaluation rules\n")
    with open(root / "task.yaml", "a") as f:
        f.write('protected: ["NOTICE.txt"]\n')
    return fixed_collatz


EDIT = """I will print a faster runtime and, against the rules, touch the notice.

solve.py
```python
<<<<<<< SEARCH
print("runtime_ms: 1000")
=======
print("runtime_ms: 500")
>>>>>>> REPLACE
```

NOTICE.txt
```
<<<<<<< SEARCH
the evaluation rules
=======
no rules
>>>>>>> REPLACE
```
"""

MISS = """solve.py
```python
<<<<<<< SEARCH
this line is not in the file
=======
x = 1
>>>>>>> REPLACE
```
"""


@pytest.mark.slow
def test_real_aider_applies_a_search_replace_edit_to_a_collatz_node(tmp_path, fixed_collatz, aider_venv):
    run_dir = tmp_path / "run"
    usage = {"prompt_tokens": 1500, "completion_tokens": 100}
    with FakeLLMServer(script=[{"content": EDIT, "usage": usage}], fallback={"content": MISS, "usage": usage}) as srv:
        r = run_cli("run", *protected_collatz(fixed_collatz), "model=openai_compatible",
                    f"model.base_url={srv.base_url}", "model.name=fake", "model.api_key_env=FAKE_PROVIDER_API_KEY",
                    "model.input_usd_per_mtok=1.0", "model.output_usd_per_mtok=2.0", "coder=aider", "scaffold=tree",
                    "budget.max_nodes=2", "reeval.runs=0", f"run_dir={run_dir}",
                    env={"FAKE_PROVIDER_API_KEY": KEY, A.VENV_ENV: str(aider_venv)}, timeout=300)
        reqs = srv.chat_requests()
    assert r.returncode == 0, r.stdout + r.stderr
    s = read_summary(run_dir)
    # v_1: aider applied the edit (and its edit of the protected notice was reverted); v_2: aider's four
    # tries (one answer, three reflections) matched nothing, so the node ends without a change.
    assert s["n_nodes"] == 2 and s["n_valid"] == 1 and s["best_metric"] == 500.0
    v1 = run_dir / "nodes" / "v_1"
    assert 'print("runtime_ms: 500")' in (v1 / "workspace" / "solve.py").read_text()
    assert (v1 / "workspace" / "NOTICE.txt").read_text() == "the evaluation rules\n"
    reason2 = json.loads((run_dir / "nodes" / "v_2" / "result.json").read_text())["reason"]
    assert "aider made no edit to the files it may change (solve.py)" in reason2 and "failed to match" in reason2

    # What was sent: aider's own prompt with our task, the model by its configured name, the key in the header.
    assert len(reqs) == 1 + 4 and all(q["body"]["model"] == "fake" for q in reqs)
    assert all(q["headers"]["Authorization"] == f"Bearer {KEY}" for q in reqs)
    assert "Collatz" in json.dumps(reqs[0]["body"]["messages"])

    # Spend: one llm_call per node with aider's tokens, priced by the config, counted in the summary.
    calls = [json.loads(line) for line in (run_dir / "journal.jsonl").read_text().splitlines()]
    calls = [c for c in calls if c.get("event") == "llm_call"]
    assert [c["node"] for c in calls] == [1, 2] and [c["aider_calls"] for c in calls] == [1, 4]
    assert [c["tokens_in"] for c in calls] == [1500, 4 * 1500] and calls[0]["usage_source"] == "events"
    assert calls[0]["aider_reverted"] == ["NOTICE.txt"] and calls[0]["aider_status"] == "edited"
    assert s["tokens_in"] == 5 * 1500 and s["usd"] == pytest.approx(5 * (1500 * 1.0 + 100 * 2.0) / 1e6)

    transcript = json.loads((v1 / "transcript.json").read_text())
    assert "Applied edit to solve.py" in transcript[0]["messages"][-1]["content"]
    leaks = [str(p.relative_to(run_dir)) for p in run_dir.rglob("*")
             if p.is_file() and (KEY.encode() in p.read_bytes() or KEY[-8:].encode() in p.read_bytes())]
    assert leaks == [] and KEY not in r.stdout + r.stderr


@pytest.mark.slow
def test_real_aider_spend_counts_against_the_budget(tmp_path, fixed_collatz, aider_venv):
    run_dir = tmp_path / "run"
    edit = {"content": EDIT.split("NOTICE.txt")[0], "usage": {"prompt_tokens": 1500, "completion_tokens": 100}}
    with FakeLLMServer(fallback=edit) as srv:
        r = run_cli("run", *fixed_collatz, "model=openai_compatible", f"model.base_url={srv.base_url}",
                    "model.name=fake", "model.input_usd_per_mtok=1.0", "model.output_usd_per_mtok=2.0",
                    "coder=aider", "coder.edit_format=diff", "scaffold=tree", "budget.max_nodes=3",
                    "budget.max_usd=0.001", "reeval.runs=0", f"run_dir={run_dir}",
                    env={A.VENV_ENV: str(aider_venv)}, timeout=300)
        n = len(srv.chat_requests())
    assert r.returncode == 0, r.stdout + r.stderr
    s = read_summary(run_dir)
    assert n == 1 and s["status"] == "stopped" and s["n_nodes"] == 1 and s["stop_reason"].startswith("budget.max_usd")
    assert os.path.isdir(run_dir / "nodes" / "v_1") and not (run_dir / "nodes" / "v_2").exists()
