#!/usr/bin/env python3
"""The `openai` engine: forwards every request to an OpenAI-compatible server (docs/engines.md).

Standard library only (urllib and threads). Messages go to POST {base_url}/chat/completions, a
prompt to POST {base_url}/completions, at most `concurrency` at a time; the response's `usage`
gives the token counts. 429, 5xx and connection errors are retried with exponential backoff (a
Retry-After header is honoured), `retries` times at most; after that the batch fails as
`engine_error`, which the broker retries later. A 400, 413 or 422 (a prompt too long for the
server's model, say) fails that request alone with `bad_request`; other statuses (401, 404...)
fail the batch. Before `ready`, GET {base_url}/models is tried until it answers or
`startup_timeout_s` passes, then `fatal startup_failed` (at once for a 401 or 404 there).

Sampling fields are forwarded as given; absent ones are left to the server's defaults.
"""

from __future__ import annotations

import http.client
import json
import os
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from compass_engine import (  # noqa: E402
    Cancelled,
    EngineConfigError,
    EngineSettings,
    Progress,
    Request,
    Result,
    log,
    run,
)

ARGUMENTS = {
    "base_url": "the server's API root, e.g. http://host:8000/v1 (required)",
    "api_key": "sent as 'Authorization: Bearer KEY'",
    "model": "the model name to ask for; default --model, else the first the server lists",
    "concurrency": "requests in flight at once, default 16",
    "retries": "retries of a request on 429, 5xx or connection errors, default 4",
    "backoff_ms": "first retry delay, doubled at each retry (at most 30 s), default 500",
    "timeout_s": "time limit of one HTTP request, default 600",
    "startup_timeout_s": "how long to wait for GET /models to answer before giving up, default 120",
    "max_tokens": "max_tokens for requests that have none (default: the server's)",
}

# Statuses that blame the request itself; it fails alone with bad_request.
REQUEST_ERRORS = frozenset({400, 413, 422})
RETRYABLE_ERRORS = (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError, OSError)


class Retryable(Exception):
    """A failure worth another try (429, 5xx, a refused or broken connection)."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class OpenAIBackend:
    name = "openai"
    arguments = ARGUMENTS

    def load(self, settings: EngineSettings) -> str:
        args = settings.args
        base = args.string("base_url")
        if not base:
            raise EngineConfigError("the openai engine needs --engine-arg base_url=http://host:port/v1")
        if urllib.parse.urlparse(base).scheme not in ("http", "https"):
            raise EngineConfigError(f"--engine-arg base_url={base}: expected an http:// or https:// URL")
        self.base = base.rstrip("/")
        self.api_key = args.string("api_key")
        self.concurrency = args.integer("concurrency", 16, minimum=1)
        self.retries = args.integer("retries", 4, minimum=0)
        self.backoff = args.number("backoff_ms", 500.0, minimum=0) / 1000
        self.timeout = args.number("timeout_s", 600.0, minimum=0.001)
        startup = args.number("startup_timeout_s", 120.0, minimum=0)
        self.default_max_tokens = args.integer("max_tokens", minimum=0)

        models = self.wait_for_server(startup)
        self.model = args.string("model") or settings.model or (models[0] if models else "")
        if not self.model:
            raise EngineConfigError(f"{self.base}/models lists no model; pass --engine-arg model=NAME")
        if models and self.model not in models:
            log(f"warning: the server lists {models}, not {self.model!r}; asking for it anyway")
        return f"openai-compatible server {self.base}, model {self.model}, concurrency {self.concurrency}"

    # HTTP

    def http(self, method: str, path: str, body: dict[str, Any] | None = None, timeout: float | None = None) -> Any:
        """The decoded JSON answer; raises Retryable, or HTTPError for other statuses."""
        headers = {"Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = urllib.request.Request(self.base + path, data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=timeout or self.timeout) as response:
                return json.loads(response.read() or b"null")
        except urllib.error.HTTPError as error:
            if error.code == 429 or error.code >= 500:
                after = error.headers.get("Retry-After") if error.headers else None
                raise Retryable(f"HTTP {error.code}: {_error_text(error)}",
                                float(after) if after and after.replace(".", "", 1).isdigit() else None) from None
            raise
        except RETRYABLE_ERRORS as error:
            raise Retryable(f"{type(error).__name__}: {error}") from None
        except json.JSONDecodeError as error:
            raise Retryable(f"the server's answer is not JSON: {error}") from None

    def wait_for_server(self, limit: float) -> list[str]:
        """Retries GET /models until it answers or `limit` seconds pass; returns the model ids."""
        deadline = time.monotonic() + limit
        delay, last = 0.25, "no attempt"
        while True:
            try:
                answer = self.http("GET", "/models", timeout=min(self.timeout, 10.0))
                data = (answer or {}).get("data", []) if isinstance(answer, dict) else []
                return [str(m["id"]) for m in data if isinstance(m, dict) and m.get("id")]
            except Retryable as error:
                last = str(error)
            except urllib.error.HTTPError as error:  # 401, 404...: waiting will not change it
                raise EngineConfigError(f"GET {self.base}/models answered HTTP {error.code}: {_error_text(error)}") from None
            if time.monotonic() + delay > deadline:
                raise EngineConfigError(f"the server at {self.base} did not answer GET /models within {limit:g}s: {last}")
            time.sleep(delay)
            delay = min(delay * 2, 2.0)

    # Requests

    def body(self, request: Request) -> tuple[str, dict[str, Any]]:
        body: dict[str, Any] = {"model": self.model}
        if request.messages is not None:
            path, body["messages"] = "/chat/completions", request.messages
        else:
            path, body["prompt"] = "/completions", request.prompt
        max_tokens = request.max_tokens if request.max_tokens is not None else self.default_max_tokens
        for key, value in (("max_tokens", max_tokens), ("temperature", request.temperature),
                           ("top_p", request.top_p), ("seed", request.seed)):
            if value is not None:
                body[key] = value
        if request.stop:
            body["stop"] = request.stop
        if request.ignore_eos:
            body["ignore_eos"] = True  # vLLM's and SGLang's extension; others ignore it
        return path, body

    def complete(self, request: Request, stop: threading.Event) -> Result:
        path, body = self.body(request)
        for attempt in range(self.retries + 1):
            if stop.is_set():
                raise Cancelled()
            try:
                answer = self.http("POST", path, body)
                return self.parse(request, answer)
            except urllib.error.HTTPError as error:
                text = f"HTTP {error.code}: {_error_text(error)}"
                if error.code in REQUEST_ERRORS:  # this request is at fault (too long, say)
                    return Result.failure(request.custom_id, f"the server refused it: {text}")
                # 401, 403, 404...: the engine's settings are wrong, not the request
                raise RuntimeError(f"request {request.custom_id}: the server answered {text}") from None
            except Retryable as error:
                if attempt == self.retries:
                    raise RuntimeError(f"request {request.custom_id}: {error} (gave up after {attempt + 1} tries)") from None
                delay = error.retry_after if error.retry_after is not None else self.backoff * 2 ** attempt
                log(f"request {request.custom_id}: {error}; retrying in {min(delay, 30.0):.2f}s")
                if stop.wait(min(delay, 30.0)):
                    raise Cancelled() from None
        raise AssertionError("unreachable")

    def parse(self, request: Request, answer: Any) -> Result:
        try:
            choice = answer["choices"][0]
            text = (choice.get("message") or {}).get("content") if request.messages is not None else choice.get("text")
            usage = answer.get("usage") or {}
        except (KeyError, IndexError, TypeError, AttributeError):
            raise Retryable(f"the server's answer has no choices: {str(answer)[:200]}") from None
        return Result(request.custom_id, text or "", int(usage.get("prompt_tokens") or 0),
                      int(usage.get("completion_tokens") or 0), choice.get("finish_reason") or "stop")

    def generate(self, requests: list[Request], progress: Progress, cancelled: threading.Event) -> list[Result]:
        results: list[Result | None] = [None] * len(requests)
        # Tells the pool's threads to give up (the batch was cancelled or failed). The loop below
        # checks `cancelled` at least every 0.25 s and sets it on the way out.
        stop = threading.Event()
        pool = ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="compass-openai")
        futures: dict[Future[Result], int] = {pool.submit(self.complete, r, stop): i for i, r in enumerate(requests)}
        try:
            pending = set(futures)
            while pending:
                done, pending = wait(pending, timeout=0.25, return_when=FIRST_COMPLETED)
                if cancelled.is_set():
                    raise Cancelled()
                for future in done:
                    result = results[futures[future]] = future.result()
                    progress.add(done=1, tokens=result.completion_tokens)
        finally:
            stop.set()
            # Requests in flight finish on their own threads; their answers are dropped.
            pool.shutdown(wait=False, cancel_futures=True)
        return [r for r in results if r is not None]


def _error_text(error: urllib.error.HTTPError) -> str:
    try:
        raw = error.read()[:2000]
        message = json.loads(raw).get("error", {})
        return str(message.get("message") if isinstance(message, dict) else message) or raw.decode(errors="replace")
    except Exception:  # noqa: BLE001 - any body at all is fine for a message
        return str(error.reason)


if __name__ == "__main__":
    run(OpenAIBackend())
