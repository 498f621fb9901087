"""openai_engine.py against a small OpenAI-compatible stub server on 127.0.0.1 (port 0)."""

from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from collections.abc import Iterator

import pytest

from conftest import StartEngine

NO_PROXY = {"NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}


class Stub:
    """The server's script and what it saw. Markers in a prompt or last message choose a behaviour:
    @429 answers 429 once then succeeds, @500 always answers 500, @400 answers 400, @slow waits."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        self.models_failures = 0  # GET /models answers 503 this many times first
        self.lock = threading.Lock()
        self.in_flight = 0
        self.max_in_flight = 0
        self.seen: dict[str, int] = {}
        self.release = threading.Event()  # @slow requests wait for this (or 0.3 s)
        self.api_key: str | None = None  # when set, requests without it get 401

    def answer(self, path: str, body: dict[str, Any], headers: dict[str, str]) -> tuple[int, dict[str, Any], dict[str, str]]:
        if self.api_key and headers.get("Authorization") != f"Bearer {self.api_key}":
            return 401, {"error": {"message": "Incorrect API key provided"}}, {}
        if path == "/v1/models":
            with self.lock:
                self.calls.append({"path": path, "headers": headers})
                if self.models_failures > 0:
                    self.models_failures -= 1
                    return 503, {"error": {"message": "warming up"}}, {}
            return 200, {"object": "list", "data": [{"id": "stub-model", "object": "model"}]}, {}
        chat = path == "/v1/chat/completions"
        text = body["messages"][-1]["content"] if chat else body["prompt"]
        with self.lock:
            self.calls.append({"path": path, "body": body, "headers": headers})
            self.seen[text] = self.seen.get(text, 0) + 1
            tries = self.seen[text]
        if "@429" in text and tries == 1:
            return 429, {"error": {"message": "rate limited"}}, {"Retry-After": "0"}
        if "@500" in text:
            return 500, {"error": {"message": "internal trouble"}}, {}
        if "@400" in text:
            return 400, {"error": {"message": "This model's maximum context length is 8 tokens"}}, {}
        if "@slow" in text:
            self.release.wait(0.3)
        words = len(text.split())
        choice: dict[str, Any] = {"index": 0, "finish_reason": "length" if chat else "stop"}
        if chat:
            choice["message"] = {"role": "assistant", "content": "chat: " + text.upper()}
        else:
            choice["text"] = text.upper()
        return 200, {"choices": [choice], "usage": {"prompt_tokens": words + (10 if chat else 0),
                                                    "completion_tokens": words, "total_tokens": 2 * words}}, {}


@pytest.fixture
def stub() -> Iterator[tuple[Stub, str]]:
    state = Stub()

    class Handler(BaseHTTPRequestHandler):
        def _reply(self, body: dict[str, Any] | None) -> None:
            with state.lock:
                state.in_flight += 1
                state.max_in_flight = max(state.max_in_flight, state.in_flight)
            try:
                status, payload, headers = state.answer(self.path, body or {}, dict(self.headers))
            finally:
                with state.lock:
                    state.in_flight -= 1
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for key, value in headers.items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            self._reply(None)

        def do_POST(self) -> None:  # noqa: N802
            length = int(self.headers.get("Content-Length", "0"))
            self._reply(json.loads(self.rfile.read(length)))

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state, f"http://127.0.0.1:{server.server_address[1]}/v1"
    state.release.set()
    server.shutdown()
    server.server_close()


def engine_args(base_url: str, **extra: str) -> dict[str, str]:
    return {"base_url": base_url, "backoff_ms": "10", "startup_timeout_s": "5", **extra}


def test_completions_and_chat(start_engine: StartEngine, stub: tuple[Stub, str]) -> None:
    state, url = stub
    engine = start_engine("openai_engine.py", model="served-name", env=NO_PROXY,
                          args=engine_args(url, api_key="sekret", max_tokens="9"))
    ready = engine.ready()
    assert url in ready["detail"] and "served-name" in ready["detail"]
    requests = [
        {"custom_id": "p", "prompt": "hello there", "temperature": 0.5, "top_p": 0.9, "seed": 3, "stop": "\n",
         "ignore_eos": True},
        {"custom_id": "c", "messages": [{"role": "system", "content": "be nice"},
                                        {"role": "user", "content": [{"type": "text", "text": "hi you"}]}],
         "max_tokens": 4},
    ]
    results = engine.result("o1", requests)
    assert results[0] == {"custom_id": "p", "text": "HELLO THERE", "prompt_tokens": 2, "completion_tokens": 2,
                          "finish_reason": "stop", "error": None}
    assert results[1] == {"custom_id": "c", "text": "chat: HI YOU", "prompt_tokens": 12, "completion_tokens": 2,
                          "finish_reason": "length", "error": None}
    posts = {c["path"]: c for c in state.calls if "body" in c}
    assert posts["/v1/completions"]["body"] == {"model": "served-name", "prompt": "hello there", "max_tokens": 9,
                                                "temperature": 0.5, "top_p": 0.9, "seed": 3, "stop": ["\n"],
                                                "ignore_eos": True}
    assert posts["/v1/chat/completions"]["body"] == {
        "model": "served-name", "max_tokens": 4,
        "messages": [{"role": "system", "content": "be nice"}, {"role": "user", "content": "hi you"}]}
    assert all(c["headers"].get("Authorization") == "Bearer sekret" for c in state.calls)


def test_429_is_retried(start_engine: StartEngine, stub: tuple[Stub, str]) -> None:
    state, url = stub
    engine = start_engine("openai_engine.py", env=NO_PROXY, args=engine_args(url))
    engine.ready()
    results = engine.result("o2", [{"custom_id": "a", "prompt": "busy @429"}, {"custom_id": "b", "prompt": "calm"}])
    assert [r["text"] for r in results] == ["BUSY @429", "CALM"]
    assert state.seen["busy @429"] == 2 and state.seen["calm"] == 1
    assert "HTTP 429" in engine.output and "retrying" in engine.output
    # No model named anywhere: the first one the server lists.
    assert {c["body"]["model"] for c in state.calls if "body" in c} == {"stub-model"}


def test_client_error_fails_that_request_alone(start_engine: StartEngine, stub: tuple[Stub, str]) -> None:
    _, url = stub
    engine = start_engine("openai_engine.py", env=NO_PROXY, args=engine_args(url))
    engine.ready()
    results = engine.result("o3", [{"custom_id": "big", "prompt": "way too long @400"},
                                   {"custom_id": "ok", "prompt": "fine"}])
    assert results[0]["error"]["code"] == "bad_request" and "maximum context length" in results[0]["error"]["message"]
    assert results[1]["text"] == "FINE"


def test_server_errors_fail_the_batch_after_bounded_retries(start_engine: StartEngine, stub: tuple[Stub, str]) -> None:
    state, url = stub
    engine = start_engine("openai_engine.py", env=NO_PROXY, args=engine_args(url, retries="2"))
    engine.ready()
    engine.batch("o4", [{"custom_id": "x", "prompt": "broken @500"}])
    failed = engine.answer("o4")
    assert failed["type"] == "failed" and failed["code"] == "engine_error" and failed["retryable"] is True
    assert "HTTP 500" in failed["message"] and "3 tries" in failed["message"]
    assert state.seen["broken @500"] == 3


def test_concurrency_is_bounded(start_engine: StartEngine, stub: tuple[Stub, str]) -> None:
    state, url = stub
    engine = start_engine("openai_engine.py", env=NO_PROXY, args=engine_args(url, concurrency="3"))
    engine.ready()
    results = engine.result("o5", [{"custom_id": f"s{i}", "prompt": f"@slow {i}"} for i in range(9)])
    assert [r["text"] for r in results] == [f"@SLOW {i}" for i in range(9)]
    assert 2 <= state.max_in_flight <= 3


def test_cancel(start_engine: StartEngine, stub: tuple[Stub, str]) -> None:
    _, url = stub
    engine = start_engine("openai_engine.py", env=NO_PROXY, args=engine_args(url, concurrency="1"))
    engine.ready()
    engine.batch("o6", [{"custom_id": f"s{i}", "prompt": f"@slow {i}"} for i in range(20)])
    engine.wait_for("progress")
    engine.cancel("o6")
    failed = engine.answer("o6")
    assert failed["type"] == "failed" and failed["code"] == "cancelled"


def test_health_check_waits_for_the_server(start_engine: StartEngine, stub: tuple[Stub, str]) -> None:
    state, url = stub
    state.models_failures = 2
    engine = start_engine("openai_engine.py", env=NO_PROXY, args=engine_args(url))
    engine.ready()
    assert sum(1 for c in state.calls if c["path"] == "/v1/models") == 3


def test_unreachable_server_is_fatal_startup_failed(start_engine: StartEngine) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    began = time.monotonic()
    engine = start_engine("openai_engine.py", env=NO_PROXY,
                          args={"base_url": f"http://127.0.0.1:{port}/v1", "startup_timeout_s": "1"})
    fatal = engine.wait_for("fatal", "ready")
    assert fatal["type"] == "fatal" and fatal["code"] == "startup_failed"
    assert "GET /models" in fatal["message"] and "1s" in fatal["message"]
    assert engine.wait_exit() == 1
    assert time.monotonic() - began < 15


def test_missing_base_url_is_fatal(start_engine: StartEngine) -> None:
    engine = start_engine("openai_engine.py", env=NO_PROXY, args={"concurrency": "2"})
    fatal = engine.wait_for("fatal", "ready")
    assert fatal["code"] == "startup_failed" and "base_url" in fatal["message"]


def test_wrong_api_key_is_fatal_at_once(start_engine: StartEngine, stub: tuple[Stub, str]) -> None:
    state, url = stub
    state.api_key = "right"
    began = time.monotonic()
    engine = start_engine("openai_engine.py", env=NO_PROXY, args=engine_args(url, api_key="wrong", startup_timeout_s="60"))
    fatal = engine.wait_for("fatal", "ready")
    assert fatal["type"] == "fatal" and fatal["code"] == "startup_failed"
    assert "HTTP 401" in fatal["message"] and "Incorrect API key" in fatal["message"]
    assert time.monotonic() - began < 10  # no waiting out the 60 s startup deadline
