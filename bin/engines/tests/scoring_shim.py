#!/usr/bin/env python3
"""Runs an engine adapter with the request model of docs/protocol.md, Payloads (token-id prompts,
logprobs, prompt_logprobs, scoring continuations; results with logprobs, prompt_logprobs, scores),
for the adapter tests: `SHIM_ADAPTER=vllm_engine.py python scoring_shim.py`.

While compass_engine.py predates that model (before the py-scoring branch merges), this patches a
minimal version of it into compass_engine: a Request with the new fields, a Result that emits the
new ones when set, and a parse_request that validates them with the messages of
spec/requests.json. Once compass_engine has the fields itself, it patches nothing and the tests
run against the real thing. Test support only: nothing outside bin/engines/tests uses it.
"""

from __future__ import annotations

import dataclasses
import os
import runpy
import sys
from dataclasses import dataclass
from typing import Any

ENGINES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ENGINES)

import compass_engine  # noqa: E402

LIMIT = 20  # logprobs and prompt_logprobs: 0 ... 20


def _has_model() -> bool:
    return "continuations" in {f.name for f in dataclasses.fields(compass_engine.Request)}


@dataclass
class Request(compass_engine.Request):
    prompt_token_ids: list[int] | None = None
    logprobs: int | None = None
    prompt_logprobs: int | None = None
    continuations: list[str | list[int]] | None = None

    @property
    def is_scoring(self) -> bool:
        return self.continuations is not None


@dataclass
class Result(compass_engine.Result):
    logprobs: dict[str, Any] | None = None
    prompt_logprobs: dict[str, Any] | None = None
    scores: list[dict[str, Any]] | None = None

    def to_json(self) -> dict[str, Any]:
        out = super().to_json()
        for name in ("logprobs", "prompt_logprobs", "scores"):
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        return out


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _ids(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(_is_int(v) and v >= 0 for v in value)


_original_parse = compass_engine.parse_request


def parse_request(index: int, raw: Any) -> compass_engine.Request | compass_engine.Result:
    if not isinstance(raw, dict):
        return _original_parse(index, raw)
    raw = {k: v for k, v in raw.items() if v is not None}
    custom_id = raw.get("custom_id")
    ids = raw.get("prompt_token_ids")
    inputs = [k for k in ("prompt", "prompt_token_ids", "messages") if k in raw]
    base = dict(raw)
    if inputs == ["prompt_token_ids"]:
        base["prompt"] = ""  # so that the old validator checks the other fields
    parsed = _original_parse(index, base)
    if isinstance(parsed, compass_engine.Result):
        return parsed

    def bad(message: str) -> compass_engine.Result:
        return Result.failure(str(custom_id), f"request {custom_id}: {message}")

    if len(inputs) > 1:
        return bad("give only one of prompt, prompt_token_ids or messages")
    values = {f.name: getattr(parsed, f.name) for f in dataclasses.fields(compass_engine.Request)}
    request = Request(**values)
    if ids is not None:
        if not _ids(ids):
            return bad("prompt_token_ids must be a non-empty list of non-negative integers")
        request.prompt, request.prompt_token_ids = None, list(ids)
    for name in ("logprobs", "prompt_logprobs"):
        value = raw.get(name)
        if value is not None and (not _is_int(value) or not 0 <= value <= LIMIT):
            return bad(f"{name} must be an integer from 0 to {LIMIT}")
        setattr(request, name, value)
    continuations = raw.get("continuations")
    if continuations is not None:
        if not isinstance(continuations, list) or not continuations or not all(
                (isinstance(c, str) and c) or _ids(c) for c in continuations):
            return bad("continuations must be a non-empty list of non-empty strings or token-id lists")
        if request.messages is not None:
            return bad("continuations need a prompt or prompt_token_ids as their context")
        if request.max_tokens:
            return bad("continuations score, they do not generate: leave max_tokens out or 0")
        if request.logprobs is not None or request.prompt_logprobs is not None:
            return bad("continuations cannot be combined with logprobs or prompt_logprobs")
        request.continuations = continuations
    return request


def main() -> None:
    adapter = os.environ["SHIM_ADAPTER"]
    if not _has_model():
        compass_engine.Request = Request  # type: ignore[misc]
        compass_engine.Result = Result  # type: ignore[misc]
        compass_engine.parse_request = parse_request
    runpy.run_path(os.path.join(ENGINES, adapter), run_name="__main__")


if __name__ == "__main__":
    main()
