#!/usr/bin/env python3
"""The `openai` engine: forwards every request to an OpenAI-compatible server (docs/engines.md).

Standard library only (urllib and threads). Messages go to POST {base_url}/chat/completions, a
prompt to POST {base_url}/completions, at most `concurrency` at a time across every batch it holds
(one thread pool for the process; `ready` says `capacity: concurrency`, so the worker hands over
one-request batches until that many requests are in flight, as a server's own clients would keep
it busy); the response's `usage`
gives the token counts. 429, 5xx and connection errors are retried with exponential backoff (a
Retry-After header is honoured), `retries` times at most; after that the batch fails as
`engine_error`, which the broker retries later. A 400, 413 or 422 (a prompt too long for the
server's model, say) fails that request alone with `bad_request`; other statuses (401, 404...)
fail the batch. Before `ready`, GET {base_url}/models is tried until it answers or
`startup_timeout_s` passes, then `fatal startup_failed` (at once for a 401 or 404 there).

Sampling fields are forwarded as given; absent ones are left to the server's defaults.

Token-id prompts, logprobs and scoring (docs/protocol.md, Payloads) pass through where the OpenAI
API has them, and fail alone with code `unsupported` where the server refuses them (its message
says what it refused):
- `prompt_token_ids` is sent as the completions prompt (a list of token ids).
- `logprobs: k` is completions' `logprobs: k`, or chat's `logprobs: true, top_logprobs: k`.
- `prompt_logprobs: k` is completions' `echo: true` with `logprobs` (the prompt's positions come back
  first and are cut off the text); a chat request cannot echo and fails alone.
- A scoring request is one completions call whose prompt is the list of context+continuation
  token-id prompts (the server batches them), with `echo: true, logprobs: 1, max_tokens: 1`; a
  continuation's score is the sum of its positions' echoed logprobs, greedy where its token's
  logprob is the top one's. Text is tokenized by the protocol's rule with the server's own
  tokenizer, through the `/tokenize` endpoint of vLLM and SGLang (POST {root}/tokenize, beside /v1);
  a server without it can score token-id contexts and continuations only.
OpenAI's logprobs name tokens by their text, not their ids: a token id is given where it is known (a
token-id prompt's positions, or a server that names tokens "token_id:N", as vLLM does with
--return-tokens-as-token-ids) and is UNKNOWN_ID (-1) elsewhere (compass's result model needs an
integer there).
"""

from __future__ import annotations

import http.client
import json
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any, TypeVar

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
    scoring_tokens,
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

# Statuses that blame the request itself; it fails alone with bad_request (or unsupported).
REQUEST_ERRORS = frozenset({400, 413, 422})
MISSING = frozenset({404, 405, 501})  # an endpoint the server does not have
T = TypeVar("T")
RETRYABLE_ERRORS = (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError, OSError)


class Retryable(Exception):
    """A failure worth another try (429, 5xx, a refused or broken connection)."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Unsupported(Exception):
    """The server cannot do what a request asks (echo, logprobs, tokenizing): that request fails alone."""


UNKNOWN_ID = -1  # a token the server named by its text only


def token_id(token: str, known: int | None = None) -> int:
    """A token's id where the server says it ("token_id:N") or the request did; else UNKNOWN_ID."""
    if token.startswith("token_id:") and token[9:].isdigit():
        return int(token[9:])
    return UNKNOWN_ID if known is None else known


def top_list(top: Any, k: int) -> list[dict[str, Any]]:
    """Completions' top_logprobs at one position ({token: logprob}) as the protocol's list, most
    likely first."""
    items = sorted((top or {}).items(), key=lambda kv: -kv[1])[:k]
    return [{"token_id": token_id(t), "token": t, "logprob": float(v)} for t, v in items]


def completion_logprobs(logprobs: dict[str, Any], lo: int, hi: int, k: int, known_ids: Sequence[int] | None,
                        first_is_none: bool) -> dict[str, Any]:
    """Positions lo..hi-1 of a completions `logprobs` object as the protocol's logprobs object."""
    tokens = list(logprobs.get("tokens") or [])[lo:hi]
    values = list(logprobs.get("token_logprobs") or [])[lo:hi]
    tops = list(logprobs.get("top_logprobs") or [])[lo:hi]
    ids = [token_id(t, known_ids[i] if known_ids is not None and i < len(known_ids) else None)
           for i, t in enumerate(tokens)]
    out_values: list[float | None] = []
    out_tops: list[list[dict[str, Any]] | None] = []
    for i in range(len(tokens)):
        none = (i == 0 and first_is_none) or i >= len(values) or values[i] is None
        out_values.append(None if none else float(values[i]))
        out_tops.append(None if none else top_list(tops[i] if i < len(tops) else None, k))
    return {"token_ids": ids, "tokens": tokens, "token_logprobs": out_values, "top_logprobs": out_tops}


def chat_logprobs(logprobs: Any, k: int) -> dict[str, Any]:
    """Chat's `logprobs.content` as the protocol's logprobs object."""
    content = (logprobs or {}).get("content") or []
    return {"token_ids": [token_id(c.get("token", "")) for c in content],
            "tokens": [c.get("token", "") for c in content],
            "token_logprobs": [float(c["logprob"]) for c in content],
            "top_logprobs": [[{"token_id": token_id(t.get("token", "")), "token": t.get("token", ""),
                               "logprob": float(t["logprob"])} for t in (c.get("top_logprobs") or [])[:k]]
                             for c in content]}


class OpenAIBackend:
    name = "openai"
    arguments = ARGUMENTS
    tokenize_error: str | None = None  # why the server's /tokenize cannot be used, once known

    def load(self, settings: EngineSettings) -> str:
        args = settings.args
        base = args.string("base_url")
        if not base:
            raise EngineConfigError("the openai engine needs --engine-arg base_url=http://host:port/v1")
        if urllib.parse.urlparse(base).scheme not in ("http", "https"):
            raise EngineConfigError(f"--engine-arg base_url={base}: expected an http:// or https:// URL")
        self.base = base.rstrip("/")
        # vLLM and SGLang serve /tokenize beside /v1, at the server's root.
        self.root = self.base[:-3] if self.base.endswith("/v1") else self.base
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
        # One pool for every batch: `concurrency` bounds the requests in flight, however many
        # batches the worker hands over (it admits requests up to `capacity`, said in ready).
        self.capacity = self.concurrency
        self.pool = ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="compass-openai")
        return f"openai-compatible server {self.base}, model {self.model}, concurrency {self.concurrency}"

    # HTTP

    def http(self, method: str, path: str, body: dict[str, Any] | None = None, timeout: float | None = None,
             root: bool = False) -> Any:
        """The decoded JSON answer; raises Retryable, or HTTPError for other statuses. `root`: a path
        at the server's root instead of under base_url."""
        headers = {"Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = urllib.request.Request((self.root if root else self.base) + path, data=data, headers=headers,
                                         method=method)
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
        sample_k, prompt_k = request.logprobs, request.prompt_logprobs
        if request.messages is not None:
            if prompt_k is not None:
                raise Unsupported("prompt_logprobs of a chat request: the chat completions API cannot echo the prompt")
            path, body["messages"] = "/chat/completions", request.messages
            if sample_k is not None:
                body["logprobs"], body["top_logprobs"] = True, sample_k
        else:
            ids = request.prompt_token_ids
            path, body["prompt"] = "/completions", request.prompt if ids is None else list(ids)
            if prompt_k is not None:
                body["echo"] = True
            if sample_k is not None or prompt_k is not None:
                body["logprobs"] = max(sample_k or 0, prompt_k or 0)
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
        echoes = request.prompt_logprobs is not None or request.is_scoring
        try:
            if request.is_scoring:
                return self.score(request, stop)
            path, body = self.body(request)
            return self.post(request, path, body, stop, lambda answer: self.parse(request, answer))
        except Unsupported as error:
            return Result.failure(request.custom_id, f"request {request.custom_id}: {error}", code="unsupported")
        except ValueError as error:  # the request itself (a continuation that tokenizes into nothing)
            return Result.failure(request.custom_id, f"request {request.custom_id}: {error}")
        except urllib.error.HTTPError as error:
            text = f"HTTP {error.code}: {_error_text(error)}"
            if echoes and any(word in text.lower() for word in ("echo", "logprob")):
                return Result.failure(request.custom_id, f"request {request.custom_id}: the server refused "
                                      f"completions with echo and logprobs: {text}", code="unsupported")
            return Result.failure(request.custom_id, f"the server refused it: {text}")

    def post(self, request: Request, path: str, body: dict[str, Any], stop: threading.Event,
             handle: Callable[[Any], T], root: bool = False) -> T:
        """POSTs with retries and returns handle(answer) (which may raise Retryable for an answer
        worth another try); a 400/413/422 raises HTTPError (the request's fault; at the root, a
        missing endpoint too); other failures fail the batch."""
        for attempt in range(self.retries + 1):
            if stop.is_set():
                raise Cancelled()
            try:
                return handle(self.http("POST", path, body, root=root))
            except urllib.error.HTTPError as error:
                if error.code in REQUEST_ERRORS or (root and error.code in MISSING):
                    raise
                # 401, 403, 404...: the engine's settings are wrong, not the request
                raise RuntimeError(f"request {request.custom_id}: the server answered "
                                   f"HTTP {error.code}: {_error_text(error)}") from None
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
            chat = request.messages is not None
            text = (choice.get("message") or {}).get("content") if chat else choice.get("text")
            usage = answer.get("usage") or {}
        except (KeyError, IndexError, TypeError, AttributeError):
            raise Retryable(f"the server's answer has no choices: {str(answer)[:200]}") from None
        text = text or ""
        prompt_tokens, completion_tokens = int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
        sample_k, prompt_k = request.logprobs, request.prompt_logprobs
        extra: dict[str, Any] = {}
        if sample_k is not None or prompt_k is not None:
            logprobs = choice.get("logprobs")
            if not logprobs:
                raise Unsupported("the server answered without the logprobs asked for")
            if chat:
                extra["logprobs"] = chat_logprobs(logprobs, sample_k or 0)
            else:
                count = len(logprobs.get("tokens") or [])
                prompt_count = 0
                if prompt_k is not None:
                    # Echo puts the prompt's positions first. vLLM runs `max_tokens: 0` as 1 and counts
                    # that token in usage but shows none of it: the prompt's own count says where it ends.
                    nothing = request.max_tokens == 0
                    prompt_count = (prompt_tokens if 0 < prompt_tokens <= count else
                                    count if nothing else count - completion_tokens)
                    if nothing:
                        completion_tokens = 0
                if prompt_k is not None:
                    ids = request.prompt_token_ids
                    extra["prompt_logprobs"] = completion_logprobs(logprobs, 0, prompt_count, prompt_k, ids, True)
                    offsets = logprobs.get("text_offset") or []
                    # Echo puts the prompt in front of the text: the completion begins at its first token.
                    if prompt_count < len(offsets):
                        text = text[offsets[prompt_count]:]
                    elif isinstance(request.prompt, str) and text.startswith(request.prompt):
                        text = text[len(request.prompt):]
                    else:
                        text = ""
                    prompt_tokens = prompt_tokens or prompt_count
                if sample_k is not None:
                    extra["logprobs"] = completion_logprobs(logprobs, prompt_count, count, sample_k, None, False)
        return Result(request.custom_id, text, prompt_tokens, completion_tokens,
                      choice.get("finish_reason") or "stop", **extra)

    # Scoring

    def tokenize(self, request: Request, text: str, special: bool, stop: threading.Event) -> list[int]:
        """The server's tokenization of `text` (vLLM's and SGLang's POST /tokenize)."""
        if self.tokenize_error is not None:
            raise Unsupported(self.tokenize_error)
        body = {"model": self.model, "prompt": text, "add_special_tokens": special}
        try:
            answer = self.post(request, "/tokenize", body, stop, lambda a: a, root=True)
            return [int(t) for t in answer["tokens"]]
        except urllib.error.HTTPError as error:
            self.tokenize_error = (f"scoring text needs the server's tokenizer, and POST {self.root}/tokenize answered "
                                   f"HTTP {error.code}: {_error_text(error)}; give prompt_token_ids and token-id "
                                   "continuations instead")
            raise Unsupported(self.tokenize_error) from None
        except (KeyError, TypeError, ValueError):
            raise Unsupported(f"POST {self.root}/tokenize answered without a list of tokens") from None

    def score_tokens(self, request: Request, stop: threading.Event) -> tuple[list[int], list[list[int]]]:
        """The context's token ids and each continuation's (compass_request.scoring_tokens) with the
        server's tokenizer; an empty context is what the server makes of an empty text with special
        tokens (its BOS)."""

        def start() -> list[int]:
            tokens = self.tokenize(request, "", True, stop)
            if len(tokens) != 1:
                raise Unsupported("scoring after an empty context needs the model's BOS token, and the server's "
                                  f"tokenizer makes {tokens} of an empty text")
            return tokens

        return scoring_tokens(request, lambda text: self.tokenize(request, text, False, stop), start)

    def score(self, request: Request, stop: threading.Event) -> Result:
        context, continuations = self.score_tokens(request, stop)
        if not all(continuations):
            raise ValueError("a continuation has no tokens of its own (it encodes into the context)")
        prompts = [context + c for c in continuations]
        body = {"model": self.model, "prompt": prompts, "echo": True, "logprobs": 1, "max_tokens": 1, "temperature": 0}
        scores = self.post(request, "/completions", body, stop, lambda answer: self.scores(answer, prompts, len(context)))
        return Result(request.custom_id, "", len(context), 0, "score", scores=scores)

    @staticmethod
    def scores(answer: Any, prompts: list[list[int]], start: int) -> list[dict[str, Any]]:
        """Each prompt's continuation (its tokens from `start` on) scored from the echoed logprobs."""
        try:
            choices = sorted(answer["choices"], key=lambda c: c.get("index", 0))
        except (KeyError, TypeError, AttributeError):
            raise Retryable(f"the server's answer has no choices: {str(answer)[:200]}") from None
        if len(choices) != len(prompts):
            raise Unsupported(f"the server answered {len(choices)} choices for {len(prompts)} prompts")
        scores = []
        for prompt, choice in zip(prompts, choices, strict=True):
            logprobs = choice.get("logprobs") or {}
            values = list(logprobs.get("token_logprobs") or [])
            tops = list(logprobs.get("top_logprobs") or [])
            if len(values) < len(prompt) or len(tops) < len(prompt):
                raise Unsupported("the server echoed fewer logprobs than the prompt has tokens")
            total, greedy = 0.0, True
            for i in range(start, len(prompt)):
                if values[i] is None:
                    raise Unsupported(f"the server echoed no logprob for prompt position {i}")
                total += float(values[i])
                # Greedy: no token at this position is more likely than the continuation's own.
                greedy = greedy and values[i] >= max((tops[i] or {}).values(), default=values[i])
            scores.append({"logprob": total, "tokens": len(prompt) - start, "greedy": greedy})
        return scores

    def generate(self, requests: list[Request], progress: Progress, cancelled: threading.Event) -> list[Result]:
        results: list[Result | None] = [None] * len(requests)
        # Tells the pool's threads to give up (the batch was cancelled or failed). The loop below
        # checks `cancelled` at least every 0.25 s and sets it on the way out.
        stop = threading.Event()
        futures: dict[Future[Result], int] = {self.pool.submit(self.complete, r, stop): i for i, r in enumerate(requests)}
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
            # This batch's requests not started yet never start; those in flight see `stop` and
            # give up (their answers are dropped). Other batches' requests go on.
            for future in futures:
                future.cancel()
        return [r for r in results if r is not None]

    def close(self) -> None:
        pool = getattr(self, "pool", None)
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)


def _error_text(error: urllib.error.HTTPError) -> str:
    try:
        raw = error.read()[:2000]
        message = json.loads(raw).get("error", {})
        return str(message.get("message") if isinstance(message, dict) else message) or raw.decode(errors="replace")
    except Exception:  # noqa: BLE001 - any body at all is fine for a message
        return str(error.reason)


if __name__ == "__main__":
    run(OpenAIBackend())
