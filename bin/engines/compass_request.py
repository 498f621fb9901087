"""The payload request model of docs/protocol.md (Payloads): `Request`, its validator
`parse_request`, and `Result` with its optional logprobs and scores.

Every validator of a payload request (this one, the Swift broker's, the client's) is tested
against the shared table spec/requests.json, messages included, so the checks below run in the
table's order: the request object, custom_id, the input (exactly one of prompt, prompt_token_ids,
messages), each field in the order of the doc's field table, then the rules that tie fields
together (a scoring request has a text or token-id context, generates nothing, and asks for no
logprobs). `compass_engine` re-exports every public name here.

Standard library only, Python 3.10+.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypedDict

MAX_TOKENS_LIMIT = 1_048_576
MAX_LOGPROBS = 20
MAX_TEMPERATURE = 100


class TopLogprob(TypedDict):
    """One of the k most likely tokens at a position."""

    token_id: int
    token: str
    logprob: float


def _json_float(value: float | None) -> float | None:
    """JSON has no infinities or NaN (json.dumps would write `-Infinity`, which no strict parser
    reads): a token the model rules out entirely is sent as the lowest finite double."""
    if value is None or math.isnan(value):
        return None
    if math.isinf(value):
        return math.copysign(1.7976931348623157e308, value)
    return value


@dataclass
class TokenLogprobs:
    """A logprobs object: per token, its id, its text decoded on its own, its logprob (None for a
    prompt's first token) and the top-k alternatives, most likely first (None for a prompt's first
    token; empty lists when k is 0)."""

    token_ids: list[int] = field(default_factory=list)
    tokens: list[str] = field(default_factory=list)
    token_logprobs: list[float | None] = field(default_factory=list)
    top_logprobs: list[list[TopLogprob] | None] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "token_ids": self.token_ids,
            "tokens": self.tokens,
            "token_logprobs": [_json_float(v) for v in self.token_logprobs],
            "top_logprobs": [None if top is None else
                             [{"token_id": t["token_id"], "token": t["token"], "logprob": _json_float(t["logprob"])}
                              for t in top] for top in self.top_logprobs],
        }


@dataclass
class Score:
    """One continuation's score: the sum of its tokens' logprobs, how many tokens it has, and
    whether greedy decoding from the context would have produced exactly these tokens."""

    logprob: float
    tokens: int
    greedy: bool

    def to_json(self) -> dict[str, Any]:
        return {"logprob": _json_float(self.logprob), "tokens": self.tokens, "greedy": self.greedy}


@dataclass
class Request:
    """One request of a batch, validated. `messages` contents are flattened to strings; `stop` is
    a list (empty strings dropped). A request with `continuations` is a scoring request: its
    context is `prompt` or `prompt_token_ids`, and it generates nothing."""

    index: int
    custom_id: str
    prompt: str | None = None
    messages: list[dict[str, str]] | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    ignore_eos: bool = False
    prompt_token_ids: list[int] | None = None
    logprobs: int | None = None
    prompt_logprobs: int | None = None
    continuations: list[str | list[int]] | None = None

    @property
    def flattened_prompt(self) -> str:
        """The text for a model without a chat template: the prompt, or the contents joined
        ("" for a token-id prompt, which has no text)."""
        if self.prompt is not None:
            return self.prompt
        return "\n".join(m["content"] for m in self.messages or [])

    @property
    def greedy(self) -> bool:
        """Greedy decoding when temperature is absent or 0 (the same rule in every engine)."""
        return not self.temperature

    @property
    def is_scoring(self) -> bool:
        return self.continuations is not None

    def to_json(self) -> dict[str, Any]:
        """The request as a payload object, with only the fields it sets (the form of
        spec/requests.json's `normalized`): what an engine forwards to another server."""
        out: dict[str, Any] = {"custom_id": self.custom_id}
        for name in ("prompt", "prompt_token_ids", "messages", "max_tokens", "temperature", "top_p"):
            if (value := getattr(self, name)) is not None:
                out[name] = value
        if self.stop:
            out["stop"] = self.stop
        if self.seed is not None:
            out["seed"] = self.seed
        if self.ignore_eos:
            out["ignore_eos"] = True
        for name in ("logprobs", "prompt_logprobs", "continuations"):
            if (value := getattr(self, name)) is not None:
                out[name] = value
        return out


@dataclass
class Result:
    custom_id: str
    text: str | None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str | None = None
    error: dict[str, str] | None = None
    # The typed objects, or their JSON shape as plain dicts (what an adapter that relays another
    # server's answer has at hand); either way sent as JSON.
    logprobs: TokenLogprobs | dict[str, Any] | None = None
    prompt_logprobs: TokenLogprobs | dict[str, Any] | None = None
    scores: list[Score] | list[dict[str, Any]] | None = None

    @classmethod
    def failure(cls, custom_id: str, message: str, code: str = "bad_request") -> Result:
        return cls(custom_id=custom_id, text=None, error={"code": code, "message": message})

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "custom_id": self.custom_id,
            "text": self.text,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "finish_reason": self.finish_reason,
            "error": self.error,
        }
        # Only what the request asked for: results of plain requests stay as they always were.
        for name in ("logprobs", "prompt_logprobs", "scores"):
            if (value := getattr(self, name)) is not None:
                out[name] = _to_json(value)
        return out


def _to_json(value: Any) -> Any:
    """`value` as JSON: typed objects through their to_json, floats made finite (see _json_float)."""
    if isinstance(value, (TokenLogprobs, Score)):
        return value.to_json()
    if isinstance(value, dict):
        return {k: _to_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_to_json(v) for v in value]
    return _json_float(value) if isinstance(value, float) else value


# MARK: Validation


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_token_ids(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(_is_int(t) and t >= 0 for t in value)


def _int_in(value: Any, low: int, high: int) -> bool:
    return _is_int(value) and low <= value <= high


class _Invalid(Exception):
    """A broken rule; the message is the table's (spec/requests.json)."""


def _messages(raw: Any) -> list[dict[str, str]]:
    if not isinstance(raw, list) or not raw:
        raise _Invalid("messages must be a non-empty list")
    flat = []
    for i, message in enumerate(raw):
        if not isinstance(message, dict):
            raise _Invalid(f"messages[{i}] must be an object")
        if not isinstance(message.get("role"), str):
            raise _Invalid(f"messages[{i}].role must be a string")
        content = message.get("content")
        if content is None:
            content = ""  # an assistant turn that only called tools, say
        elif isinstance(content, list) and all(
                isinstance(p, dict) and p.get("type") in (None, "text") and isinstance(p.get("text"), str)
                for p in content):
            content = "".join(p["text"] for p in content)  # OpenAI's list of parts: the texts, joined
        if not isinstance(content, str):
            raise _Invalid(f"messages[{i}].content must be a string or a list of text parts")
        flat.append({"role": message["role"], "content": content})
    return flat


def _validate(index: int, custom_id: str, raw: dict[str, Any]) -> Request:
    def get(key: str) -> Any:
        return raw.get(key)  # a null field is the same as an absent one

    inputs = [key for key in ("prompt", "prompt_token_ids", "messages") if get(key) is not None]
    if not inputs:
        raise _Invalid("give one of prompt, prompt_token_ids or messages")
    if len(inputs) > 1:
        raise _Invalid("give only one of prompt, prompt_token_ids or messages")
    request = Request(index=index, custom_id=custom_id)
    if (prompt := get("prompt")) is not None:
        if not isinstance(prompt, str):
            raise _Invalid("prompt must be a string")
        request.prompt = prompt
    if (ids := get("prompt_token_ids")) is not None:
        if not _is_token_ids(ids):
            raise _Invalid("prompt_token_ids must be a non-empty list of non-negative integers")
        request.prompt_token_ids = list(ids)
    if (messages := get("messages")) is not None:
        request.messages = _messages(messages)

    if (max_tokens := get("max_tokens")) is not None:
        if not _int_in(max_tokens, 0, MAX_TOKENS_LIMIT):
            raise _Invalid(f"max_tokens must be an integer from 0 to {MAX_TOKENS_LIMIT}")
        request.max_tokens = max_tokens
    if (temperature := get("temperature")) is not None:
        if not _is_number(temperature) or not 0 <= temperature <= MAX_TEMPERATURE:  # NaN fails both
            raise _Invalid(f"temperature must be a number from 0 to {MAX_TEMPERATURE}")
        request.temperature = float(temperature)
    if (top_p := get("top_p")) is not None:
        if not _is_number(top_p) or not 0 < top_p <= 1:
            raise _Invalid("top_p must be a number above 0 and at most 1")
        request.top_p = float(top_p)
    if (stop := get("stop")) is not None:
        stops = [stop] if isinstance(stop, str) else stop
        if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
            raise _Invalid("stop must be a string or a list of strings")
        request.stop = [s for s in stops if s]  # an empty stop string would stop everything at once
    if (seed := get("seed")) is not None:
        if not _int_in(seed, -(1 << 63), (1 << 63) - 1):  # a 64-bit integer, as every validator reads it
            raise _Invalid("seed must be an integer")
        request.seed = seed
    if (ignore_eos := get("ignore_eos")) is not None:
        if not isinstance(ignore_eos, bool):
            raise _Invalid("ignore_eos must be true or false")
        request.ignore_eos = ignore_eos
    for key in ("logprobs", "prompt_logprobs"):
        if (k := get(key)) is not None:
            if not _int_in(k, 0, MAX_LOGPROBS):
                raise _Invalid(f"{key} must be an integer from 0 to {MAX_LOGPROBS}")
            setattr(request, key, k)
    if (continuations := get("continuations")) is not None:
        if not isinstance(continuations, list) or not continuations or not all(
                (isinstance(c, str) and c) or _is_token_ids(c) for c in continuations):
            raise _Invalid("continuations must be a non-empty list of non-empty strings or token-id lists")
        request.continuations = [c if isinstance(c, str) else list(c) for c in continuations]

    if request.is_scoring:
        if request.messages is not None:
            raise _Invalid("continuations need a prompt or prompt_token_ids as their context")
        if request.max_tokens:
            raise _Invalid("continuations score, they do not generate: leave max_tokens out or 0")
        if request.logprobs is not None or request.prompt_logprobs is not None:
            raise _Invalid("continuations cannot be combined with logprobs or prompt_logprobs")
    return request


def parse_request(index: int, raw: Any) -> Request | Result:
    """A validated request, or the `bad_request` result it gets instead: its message is
    `request ID: RULE` (ID `#index` when the request has no usable custom_id)."""
    if not isinstance(raw, dict):
        return Result.failure(f"#{index}", f"request #{index}: a request must be a JSON object")
    custom_id = raw.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id:
        return Result.failure(f"#{index}", f"request #{index}: custom_id must be a non-empty string")
    try:
        return _validate(index, custom_id, raw)
    except _Invalid as rule:
        return Result.failure(custom_id, f"request {custom_id}: {rule}")


def apply_stop(text: str, stops: Sequence[str]) -> tuple[str, bool]:
    """`text` cut before the earliest stop string, and whether one was found."""
    cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


def scoring_tokens(request: Request, encode: Callable[[str], list[int]],
                   start: Callable[[], list[int]]) -> tuple[list[int], list[list[int]]]:
    """A scoring request's context tokens and each continuation's, by the rule of docs/protocol.md
    ("How a text continuation is tokenized", as lm-evaluation-harness does it), for every engine.

    `encode(text)` is the model's tokenizer without special tokens; `start()` the tokens of an
    empty context (the model's BOS, else EOS; raise ValueError, or the engine's own per-request
    error, when there is none). Whitespace at the end of a text context moves to the front of each
    text continuation, whose tokens are those of encode(context + continuation) after the first
    len(encode(context)), so the context is the same for every continuation and computed once. An
    empty context (empty once its trailing whitespace moved) is `start()`, and each text
    continuation is encoded on its own. A token-id context takes a text continuation encoded on
    its own; token-id continuations are taken as they are."""
    conts = request.continuations or []
    if request.prompt_token_ids is not None:
        return list(request.prompt_token_ids), [list(c) if isinstance(c, list) else encode(c) for c in conts]
    text = request.prompt or ""
    stripped = text.rstrip()
    moved = text[len(stripped):]
    context = encode(stripped) if stripped else []
    if not context:
        return start(), [list(c) if isinstance(c, list) else encode(moved + c) for c in conts]
    return context, [list(c) if isinstance(c, list) else encode(stripped + moved + c)[len(context):] for c in conts]


def scoring_texts(request: Request) -> list[str]:
    """The texts `scoring_tokens(request, ...)` encodes (those of a text context that encodes to
    tokens: a context that encodes to none asks for others, which `prefetch_encoder` then encodes
    one by one)."""
    texts = [c for c in request.continuations or [] if isinstance(c, str)]
    if request.prompt_token_ids is not None:
        return texts
    text = request.prompt or ""
    stripped = text.rstrip()
    moved = text[len(stripped):]
    if not stripped:
        return [moved + c for c in texts]
    return [stripped] + [stripped + moved + c for c in texts]


def many_encoder(tok: Any) -> Callable[[list[str]], Any] | None:
    """A fast Hugging Face tokenizer's batch call without special tokens (`prefetch_encoder`'s
    `encode_many`), or None for any other tokenizer, whose batch call may not equal one call per text."""
    if not callable(tok) or getattr(tok, "is_fast", None) is not True:
        return None
    return lambda texts: tok(texts, add_special_tokens=False)["input_ids"]


def prefetch_encoder(requests: Sequence[Request], encode: Callable[[str], list[int]],
                     encode_many: Callable[[list[str]], Sequence[Sequence[int]]] | None) -> Callable[[str], list[int]]:
    """`encode` for the scoring requests of one batch, with every text they need (`scoring_texts`)
    encoded beforehand in one `encode_many(texts)` call. Scoring encodes each context once and
    again with every continuation (about five long texts per four-choice item): one call per text
    holds the GIL for all of it, while a fast tokenizer's batch call runs on every core and lets
    the engine's other threads go on. A text not encoded beforehand, or a batch whose call fails
    (a text the tokenizer refuses: that request then fails alone), goes to `encode`."""
    texts = list(dict.fromkeys(t for r in requests if r.is_scoring for t in scoring_texts(r)))
    if encode_many is None or len(texts) < 2:
        return encode
    try:
        known = dict(zip(texts, (list(ids) for ids in encode_many(texts)), strict=True))
    except Exception:  # noqa: BLE001 - each text again on its own, where its request fails alone
        return encode
    return lambda text: known[text] if text in known else encode(text)
