"""openai_engine.py against a small OpenAI-compatible stub server on 127.0.0.1 (port 0)."""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from collections.abc import Iterator

import pytest

from conftest import StartEngine

NO_PROXY = {"NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}

# The stub's toy model for logprobs: at every position the top tokens are these, most likely first;
# any other token is less likely than all of them.
TOP = [(" yes", -0.1), (" no", -2.0), (" maybe", -3.0), (" perhaps", -4.0), (" never", -5.0)]


class ToyTokenizer:
    """Words with their leading space, as byte-level BPE makes them (" is" is one token), and runs of
    spaces of their own; ids from 10 up, BOS 1. Whitespace placement changes the tokens, which is
    what the protocol's continuation rule is about."""

    def __init__(self) -> None:
        self.ids: dict[str, int] = {"<s>": 1}
        self.words: dict[int, str] = {1: "<s>"}

    def encode(self, text: str, special: bool = False) -> list[int]:
        out = [1] if special else []
        for token in re.findall(r" ?\S+| +", text):
            if token not in self.ids:
                self.ids[token] = len(self.ids) + 9
                self.words[self.ids[token]] = token
            out.append(self.ids[token])
        return out

    def token(self, token_id: int) -> str:
        return self.words.get(token_id, f"<{token_id}>")

    def logprob(self, token_id: int) -> float:
        return dict(TOP).get(self.token(token_id), -6.0 - (token_id % 5) * 0.5)


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
        self.tok = ToyTokenizer()
        self.no_tokenize = False  # POST /tokenize answers 404 (a server without it)
        self.refuse_echo = False  # completions with echo and logprobs answer 400 (as OpenAI's do now)
        self.ids_as_text = False  # name tokens "token_id:N" (vLLM's --return-tokens-as-token-ids)

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
        if path == "/tokenize":
            with self.lock:
                self.calls.append({"path": path, "body": body, "headers": headers})
                if self.no_tokenize:
                    return 404, {"detail": "Not Found"}, {}
                tokens = self.tok.encode(body["prompt"], body.get("add_special_tokens", True))
            return 200, {"tokens": tokens, "count": len(tokens), "max_model_len": 2048}, {}
        chat = path == "/v1/chat/completions"
        if body.get("logprobs") is not None or not isinstance(body.get("prompt", ""), str):
            with self.lock:
                self.calls.append({"path": path, "body": body, "headers": headers})
                return self.logprobs_answer(body, chat)
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


    def logprobs_answer(self, body: dict[str, Any], chat: bool) -> tuple[int, dict[str, Any], dict[str, str]]:
        """Token-id prompts, batches of prompts, echo and logprobs: the stub's toy model generates
        " yes" max_tokens times (default 2)."""
        if self.refuse_echo and body.get("echo") and body.get("logprobs") is not None:
            return 400, {"error": {"message": "Setting 'echo' and 'logprobs' at the same time is not supported "
                                              "for this model."}}, {}
        tok, k, count = self.tok, body.get("top_logprobs" if chat else "logprobs") or 0, body.get("max_tokens", 2)
        generated = [tok.encode(" yes")[0]] * count

        def name(t: int) -> str:
            return f"token_id:{t}" if self.ids_as_text else tok.token(t)

        def top(_: int) -> dict[str, float]:
            return {name(tok.encode(w)[0]): v for w, v in TOP[:k]}

        if chat:
            content = [{"token": tok.token(t), "logprob": tok.logprob(t), "bytes": list(tok.token(t).encode()),
                        "top_logprobs": [{"token": w, "logprob": v, "bytes": list(w.encode())} for w, v in TOP[:k]]}
                       for t in generated]
            choice = {"index": 0, "finish_reason": "length", "logprobs": {"content": content},
                      "message": {"role": "assistant", "content": "".join(tok.token(t) for t in generated)}}
            return 200, {"choices": [choice], "usage": {"prompt_tokens": 3, "completion_tokens": count}}, {}
        prompts = body["prompt"]
        if isinstance(prompts, str) or (prompts and isinstance(prompts[0], int)):
            prompts = [prompts]
        choices, prompt_tokens = [], 0
        for index, prompt in enumerate(prompts):
            ids = tok.encode(prompt) if isinstance(prompt, str) else list(prompt)
            prompt_tokens += len(ids)
            shown = (ids if body.get("echo") else []) + generated
            tokens = [name(t) for t in shown]
            values: list[float | None] = [tok.logprob(t) for t in shown]
            tops: list[dict[str, float] | None] = [top(t) | {name(t): tok.logprob(t)} for t in shown]
            if body.get("echo"):
                values[0] = tops[0] = None
            offsets = [sum(len(t) for t in tokens[:i]) for i in range(len(tokens))]
            choices.append({"index": index, "text": "".join(tokens), "finish_reason": "length",
                            "logprobs": {"tokens": tokens, "token_logprobs": values, "top_logprobs": tops,
                                         "text_offset": offsets} if body.get("logprobs") is not None else None})
        # vLLM runs echo with max_tokens 0 as max_tokens 1 and counts that token, unshown, in usage.
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": max(count, 1 if body.get("echo") else 0) * len(prompts)}
        return 200, {"choices": choices, "usage": usage}, {}


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


# MARK: Logprobs and scoring (docs/protocol.md, Payloads)


def start_ready(start_engine: StartEngine, url: str, **extra: str) -> Any:
    engine = start_engine("openai_engine.py", env=NO_PROXY, args=engine_args(url, **extra))
    engine.ready()
    return engine


def posts(state: Stub, path: str) -> list[dict[str, Any]]:
    return [c["body"] for c in state.calls if c["path"] == path]


def test_scoring_tokenizes_with_the_server_and_echoes(start_engine: StartEngine, stub: tuple[Stub, str]) -> None:
    state, url = stub
    engine = start_ready(start_engine, url)
    requests = [{"custom_id": "s", "prompt": "Q: is it? A: ", "continuations": ["yes", "no", "yes yes"]},
                {"custom_id": "ids", "prompt_token_ids": [5, 6], "continuations": [[7], [8, 9]]}]
    text, ids = engine.result("sc", requests)
    tok = state.tok
    # The context's trailing space moved onto the continuations: " yes" is one token of the server's.
    context = tok.encode("Q: is it? A:")
    yes, no = tok.encode(" yes")[0], tok.encode(" no")[0]
    assert {(b["prompt"], b["add_special_tokens"]) for b in posts(state, "/tokenize")} == {
        ("Q: is it? A:", False), ("Q: is it? A: yes", False), ("Q: is it? A: no", False),
        ("Q: is it? A: yes yes", False)}
    bodies = {json.dumps(b["prompt"]): b for b in posts(state, "/v1/completions")}
    scoring = bodies[json.dumps([context + [yes], context + [no], context + [yes, yes]])]
    assert (scoring["echo"], scoring["logprobs"], scoring["max_tokens"], scoring["temperature"]) == (True, 1, 1, 0)
    assert text == {"custom_id": "s", "text": "", "prompt_tokens": 4, "completion_tokens": 0, "finish_reason": "score",
                    "error": None, "scores": [{"logprob": -0.1, "tokens": 1, "greedy": True},
                                              {"logprob": -2.0, "tokens": 1, "greedy": False},
                                              {"logprob": -0.2, "tokens": 2, "greedy": True}]}
    assert json.dumps([[5, 6, 7], [5, 6, 8, 9]]) in bodies
    assert ids["scores"] == [{"logprob": -7.0, "tokens": 1, "greedy": False},
                             {"logprob": -7.5 - 8.0, "tokens": 2, "greedy": False}] and ids["prompt_tokens"] == 2


def test_scoring_an_empty_context_starts_with_the_servers_bos(start_engine: StartEngine, stub: tuple[Stub, str]) -> None:
    state, url = stub
    engine = start_ready(start_engine, url)
    (result,) = engine.result("e", [{"custom_id": "e", "prompt": "", "continuations": ["yes"]}])
    assert ("", True) in {(b["prompt"], b["add_special_tokens"]) for b in posts(state, "/tokenize")}
    (body,) = posts(state, "/v1/completions")
    assert body["prompt"] == [[1] + state.tok.encode("yes")]
    assert result["prompt_tokens"] == 1 and result["scores"][0]["tokens"] == 1


def test_what_the_server_cannot_do_fails_alone_as_unsupported(start_engine: StartEngine,
                                                              stub: tuple[Stub, str]) -> None:
    state, url = stub
    state.no_tokenize = True
    engine = start_ready(start_engine, url)
    requests = [{"custom_id": "text", "prompt": "Q: A:", "continuations": [" yes"]},
                {"custom_id": "ids", "prompt_token_ids": [5], "continuations": [[7]]},
                {"custom_id": "chat", "messages": [{"role": "user", "content": "hi"}], "prompt_logprobs": 0},
                {"custom_id": "plain", "prompt": "fine"}]
    text, ids, chat, plain = engine.result("u1", requests)
    assert text["error"]["code"] == "unsupported"
    assert "/tokenize answered HTTP 404" in text["error"]["message"] and "prompt_token_ids" in text["error"]["message"]
    assert ids["error"] is None and ids["scores"][0]["logprob"] == -7.0  # token ids need no tokenizer
    assert chat["error"]["code"] == "unsupported" and "cannot echo" in chat["error"]["message"]
    assert not posts(state, "/v1/chat/completions")  # refused without asking the server
    assert plain["text"] == "FINE"
    # A server that refuses echo with logprobs (OpenAI's do now): scoring and prompt logprobs fail alone.
    state.no_tokenize, state.refuse_echo = False, True
    scored, prompt, generated = engine.result("u2", [
        {"custom_id": "s", "prompt_token_ids": [5], "continuations": [[7]]},
        {"custom_id": "p", "prompt": "hello", "max_tokens": 0, "prompt_logprobs": 0},
        {"custom_id": "g", "prompt": "hello", "max_tokens": 1, "logprobs": 0}])
    for result in (scored, prompt):
        assert result["error"]["code"] == "unsupported", result
        assert "echo and logprobs" in result["error"]["message"] and "not supported for this model" in result["error"]["message"]
    assert generated["error"] is None and generated["logprobs"]["token_logprobs"] == [-0.1]


def test_completion_logprobs_and_echoed_prompt_logprobs(start_engine: StartEngine, stub: tuple[Stub, str]) -> None:
    state, url = stub
    engine = start_ready(start_engine, url)
    requests = [{"custom_id": "lp", "prompt": "hello there", "max_tokens": 2, "logprobs": 2, "prompt_logprobs": 1},
                {"custom_id": "ppl", "prompt_token_ids": [200, 201], "max_tokens": 0, "prompt_logprobs": 0}]
    lp, ppl = engine.result("lp", requests)
    bodies = {b["prompt"] if isinstance(b["prompt"], str) else json.dumps(b["prompt"]): b
              for b in posts(state, "/v1/completions")}
    assert (bodies["hello there"]["echo"], bodies["hello there"]["logprobs"]) == (True, 2)
    assert (bodies["[200, 201]"]["echo"], bodies["[200, 201]"]["logprobs"], bodies["[200, 201]"]["max_tokens"]) == (True, 0, 0)
    tok = state.tok
    there = tok.encode(" there")[0]
    yes_no = [{"token_id": -1, "token": " yes", "logprob": -0.1}, {"token_id": -1, "token": " no", "logprob": -2.0}]
    # The echoed prompt is cut off the text and reported as prompt_logprobs, top 1; the server names
    # tokens by their text, so their ids are -1 (unknown).
    assert lp["text"] == " yes yes" and (lp["prompt_tokens"], lp["completion_tokens"]) == (2, 2)
    assert lp["prompt_logprobs"] == {"token_ids": [-1, -1], "tokens": ["hello", " there"],
                                     "token_logprobs": [None, tok.logprob(there)], "top_logprobs": [None, yes_no[:1]]}
    assert lp["logprobs"] == {"token_ids": [-1, -1], "tokens": [" yes", " yes"], "token_logprobs": [-0.1, -0.1],
                              "top_logprobs": [yes_no, yes_no]}
    # Token ids of a token-id prompt are known; k = 0 gives empty alternatives.
    assert ppl["text"] == "" and ppl["completion_tokens"] == 0 and "logprobs" not in ppl
    assert ppl["prompt_logprobs"] == {"token_ids": [200, 201], "tokens": ["<200>", "<201>"],
                                      "token_logprobs": [None, -6.5], "top_logprobs": [None, []]}


def test_chat_logprobs(start_engine: StartEngine, stub: tuple[Stub, str]) -> None:
    state, url = stub
    engine = start_ready(start_engine, url)
    (result,) = engine.result("c", [{"custom_id": "c", "messages": [{"role": "user", "content": "hi"}],
                                     "max_tokens": 1, "logprobs": 1}])
    (body,) = posts(state, "/v1/chat/completions")
    assert (body["logprobs"], body["top_logprobs"]) == (True, 1)
    assert result["text"] == " yes" and result["logprobs"] == {
        "token_ids": [-1], "tokens": [" yes"], "token_logprobs": [-0.1],
        "top_logprobs": [[{"token_id": -1, "token": " yes", "logprob": -0.1}]]}


def test_token_ids_where_the_server_names_tokens_by_id(start_engine: StartEngine, stub: tuple[Stub, str]) -> None:
    state, url = stub
    state.ids_as_text = True
    engine = start_ready(start_engine, url)
    (result,) = engine.result("ids", [{"custom_id": "i", "prompt": "hello", "max_tokens": 1, "logprobs": 1}])
    yes = state.tok.encode(" yes")[0]
    assert result["logprobs"] == {"token_ids": [yes], "tokens": [f"token_id:{yes}"], "token_logprobs": [-0.1],
                                  "top_logprobs": [[{"token_id": yes, "token": f"token_id:{yes}", "logprob": -0.1}]]}
