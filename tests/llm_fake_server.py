"""A real HTTP server on 127.0.0.1 that speaks the OpenAI chat-completions protocol, for tests.

Stdlib only (``http.server``). Each request to ``POST /v1/chat/completions`` takes the next *action*
from a script (then ``fallback`` once the script is used up). An action is a dict:

- ``content``: the reply text; ``reasoning``: a reasoning trace sent as ``message.reasoning_content``
  (``reasoning_field`` names another field); ``model``: the response's ``model`` (default: the request's);
  ``usage``: ``{"prompt_tokens": .., "completion_tokens": ..}``, or ``None`` to send no usage;
  ``finish_reason`` (default ``stop``).
- ``status``: an HTTP error code (429, 500, 401, 400, ...) with ``error_message``; ``retry_after``: a
  ``Retry-After`` header.
- ``delay``: seconds to sleep before answering (timeouts); ``drop``: close the connection without an
  answer; ``malformed``: answer 200 with a body that is not JSON.

A request with ``"stream": true`` is answered with server-sent events (chunks of the content, the
reasoning as ``delta.reasoning_content``, and a usage chunk when ``stream_options.include_usage``).
``GET /v1/models`` lists one model (a readiness probe). Every request is recorded in ``requests``.

Run as a script (``python tests/llm_fake_server.py --port 0``) it serves until killed and prints
``listening on PORT``: a stand-in for a model server process.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import socket
import sys
import threading
import time
import uuid
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


def _tokens(text: str) -> int:
    return max(1, len(text) // 4)


class FakeLLMServer:
    def __init__(self, script: list[dict[str, Any]] | None = None, fallback: dict[str, Any] | None = None,
                 host: str = "127.0.0.1", port: int = 0, model_id: str = "fake"):
        self.script: deque[dict[str, Any]] = deque(script or [])
        self.fallback = fallback if fallback is not None else {"content": "NO CHANGE"}
        self.model_id = model_id
        self.requests: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer((host, port), self._handler())
        self._httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ control
    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def push(self, *actions: dict[str, Any]) -> None:
        with self._lock:
            self.script.extend(actions)

    def chat_requests(self) -> list[dict[str, Any]]:
        return [r for r in self.requests if r["path"].endswith("/chat/completions")]

    def start(self) -> FakeLLMServer:
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> FakeLLMServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _next_action(self) -> dict[str, Any]:
        with self._lock:
            return self.script.popleft() if self.script else dict(self.fallback)

    # ------------------------------------------------------------------ protocol
    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # quiet
                pass

            def _send_json(self, code: int, obj: Any, headers: dict[str, str] | None = None) -> None:
                body = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                server.requests.append({"path": self.path, "method": "GET", "headers": dict(self.headers)})
                if self.path.rstrip("/").endswith("/models"):
                    self._send_json(200, {"object": "list", "data": [{"id": server.model_id, "object": "model"}]})
                else:
                    self._send_json(404, {"error": {"message": "not found"}})

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                try:
                    body = json.loads(raw or b"{}")
                except ValueError:
                    body = {"_raw": raw.decode(errors="replace")}
                with server._lock:
                    server.requests.append({"path": self.path, "method": "POST", "body": body,
                                            "headers": dict(self.headers), "t": time.monotonic()})
                if not self.path.rstrip("/").endswith("/chat/completions"):
                    self._send_json(404, {"error": {"message": f"no route {self.path}"}})
                    return
                act = server._next_action()
                if act.get("delay"):
                    time.sleep(float(act["delay"]))
                if act.get("drop"):
                    self.close_connection = True
                    try:
                        self.connection.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
                    return
                if act.get("status"):
                    code = int(act["status"])
                    headers = {"Retry-After": str(act["retry_after"])} if "retry_after" in act else {}
                    err = {"message": act.get("error_message", f"fake error {code}"),
                           "type": act.get("error_type", "invalid_request_error"), "code": act.get("code")}
                    self._send_json(code, {"error": err}, headers)
                    return
                if act.get("malformed"):
                    data = b'{"id": "x", "choices": [ this is not json'
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                    return
                if body.get("stream"):
                    self._stream(body, act)
                else:
                    self._send_json(200, self._completion(body, act))

            def _usage(self, body: dict[str, Any], act: dict[str, Any], content: str) -> dict[str, int] | None:
                if "usage" in act:
                    u = act["usage"]
                    if u is None:
                        return None
                    u = dict(u)
                    u.setdefault("total_tokens", u.get("prompt_tokens", 0) + u.get("completion_tokens", 0))
                    return u
                prompt = sum(_tokens(str(m.get("content", ""))) for m in body.get("messages", []))
                out = _tokens(content) + (_tokens(act["reasoning"]) if act.get("reasoning") else 0)
                return {"prompt_tokens": prompt, "completion_tokens": out, "total_tokens": prompt + out}

            def _completion(self, body: dict[str, Any], act: dict[str, Any]) -> dict[str, Any]:
                content = str(act.get("content", ""))
                msg: dict[str, Any] = {"role": "assistant", "content": content}
                if act.get("reasoning"):
                    msg[act.get("reasoning_field", "reasoning_content")] = act["reasoning"]
                out: dict[str, Any] = {
                    "id": f"chatcmpl-{uuid.uuid4().hex[:12]}", "object": "chat.completion",
                    "created": int(time.time()), "model": act.get("model", body.get("model", server.model_id)),
                    "choices": [{"index": 0, "message": msg, "finish_reason": act.get("finish_reason", "stop")}],
                }
                usage = self._usage(body, act, content)
                if usage is not None:
                    out["usage"] = usage
                return out

            def _stream(self, body: dict[str, Any], act: dict[str, Any]) -> None:
                content = str(act.get("content", ""))
                cid = f"chatcmpl-{uuid.uuid4().hex[:12]}"
                model = act.get("model", body.get("model", server.model_id))
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Cache-Control", "no-cache")
                self.close_connection = True
                self.end_headers()

                def chunk(delta: dict[str, Any], finish: str | None = None, usage: Any = None) -> None:
                    obj: dict[str, Any] = {"id": cid, "object": "chat.completion.chunk", "created": int(time.time()),
                                           "model": model,
                                           "choices": [] if usage else [{"index": 0, "delta": delta,
                                                                         "finish_reason": finish}]}
                    if usage:
                        obj["usage"] = usage
                    self.wfile.write(b"data: " + json.dumps(obj).encode() + b"\n\n")
                    self.wfile.flush()

                chunk({"role": "assistant", "content": ""})
                if act.get("reasoning"):
                    r = act["reasoning"]
                    for i in range(0, len(r), max(1, len(r) // 2 + 1)):
                        chunk({act.get("reasoning_field", "reasoning_content"): r[i:i + len(r) // 2 + 1]})
                step = max(1, len(content) // 3 + 1)
                for i in range(0, len(content), step):
                    chunk({"content": content[i:i + step]})
                    if act.get("chunk_delay"):
                        time.sleep(float(act["chunk_delay"]))
                chunk({}, finish=act.get("finish_reason", "stop"))
                usage = self._usage(body, act, content)
                if usage and (body.get("stream_options") or {}).get("include_usage"):
                    chunk({}, usage=usage)
                self.wfile.write(b"data: [DONE]\n\n")
                self.wfile.flush()

        return Handler


@contextlib.contextmanager
def loopback_only():
    """Inside it, a socket connection to anything but loopback raises (and is listed in ``attempts``)."""
    real = socket.socket.connect
    attempts: list[Any] = []

    def connect(sock: socket.socket, address: Any) -> Any:
        host = address[0] if isinstance(address, tuple) else address
        if sock.family in (socket.AF_INET, socket.AF_INET6) and host not in ("127.0.0.1", "::1", "localhost"):
            attempts.append(address)
            raise ConnectionRefusedError(f"tests may only connect to loopback, not {address!r}")
        return real(sock, address)

    socket.socket.connect = connect  # type: ignore[method-assign]
    try:
        yield attempts
    finally:
        socket.socket.connect = real  # type: ignore[method-assign]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="a fake OpenAI-compatible chat server on 127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--reply", default="NO CHANGE", help="the text every request gets")
    p.add_argument("--model-id", default="fake")
    p.add_argument("--startup-delay", type=float, default=0.0, help="seconds to wait before listening")
    args = p.parse_args(argv)
    time.sleep(args.startup_delay)
    srv = FakeLLMServer(fallback={"content": args.reply}, host=args.host, port=args.port, model_id=args.model_id)
    print(f"listening on {srv.port}", flush=True)
    try:
        srv._httpd.serve_forever(poll_interval=0.05)
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
