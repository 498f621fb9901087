"""The values a compass producer sends and receives (the payload shapes of docs/protocol.md)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Optional, Union


class CompassError(Exception):
    """The broker refused something for good, or the client could not get an answer.

    ``code`` is a reject code of the protocol (``unknown_pool``, ``bad_version``, ``too_large``...)
    or ``closed`` when the client was closed before the answer came.
    """

    def __init__(self, code: str, message: str = "", batch_id: Optional[str] = None) -> None:
        super().__init__(f"{code}: {message}" if message else code)
        self.code = code
        self.message = message
        self.batch_id = batch_id


@dataclass
class Request:
    """One request of a batch (a JSON object of the payload array; docs/protocol.md, Payloads).

    Give exactly one input: ``prompt``, ``prompt_token_ids`` or ``messages``. With
    ``continuations`` it is a scoring request: the prompt (or token ids) is the context, each
    continuation is scored after it, and the result carries ``scores``.
    """

    custom_id: str
    prompt: Optional[str] = None
    #: Chat input: ``[{"role": ..., "content": ...}]``; the engine applies the model's chat template.
    messages: Optional[list[dict[str, Any]]] = None
    max_tokens: Optional[int] = None
    temperature: Optional[float] = None
    top_p: Optional[float] = None
    stop: Union[str, list[str], None] = None
    seed: Optional[int] = None
    ignore_eos: Optional[bool] = None
    #: The input as token ids of the served model's tokenizer, fed as they are.
    prompt_token_ids: Optional[list[int]] = None
    #: 0 to 20: each generated token's logprob and that many most likely alternatives.
    logprobs: Optional[int] = None
    #: 0 to 20: each prompt token's logprob given the ones before it (perplexity: with max_tokens=0).
    prompt_logprobs: Optional[int] = None
    #: Scoring: texts or token-id lists, each scored after the context.
    continuations: Optional[list[Union[str, list[int]]]] = None
    #: Further fields passed to the engine as they are.
    extra: dict[str, Any] = field(default_factory=dict)

    _FIELDS = ("prompt", "prompt_token_ids", "messages", "max_tokens", "temperature", "top_p", "stop", "seed",
               "ignore_eos", "logprobs", "prompt_logprobs", "continuations")

    def to_json(self) -> dict[str, Any]:
        """The payload object: fields that are None are left out."""
        out: dict[str, Any] = {"custom_id": self.custom_id}
        for name in self._FIELDS:
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        out.update(self.extra)
        return out


@dataclass(frozen=True)
class Score:
    """One continuation's score: the sum of its tokens' logprobs (natural log), how many tokens
    it has, and whether greedy decoding from the context would have produced exactly them."""

    logprob: Optional[float]
    tokens: int
    greedy: bool

    @classmethod
    def from_json(cls, obj: Any) -> Score:
        obj = obj if isinstance(obj, dict) else {}
        logprob = obj.get("logprob")
        return cls(float(logprob) if isinstance(logprob, (int, float)) else None, int(obj.get("tokens") or 0),
                   bool(obj.get("greedy")))


@dataclass(frozen=True)
class TopLogprob:
    token_id: int
    token: str
    logprob: float


@dataclass
class Logprobs:
    """Per token: its id, its text decoded on its own, its logprob, and the most likely tokens at
    its position, best first. A prompt's first token has ``None`` for both."""

    token_ids: list[int]
    tokens: list[str]
    token_logprobs: list[Optional[float]]
    top_logprobs: list[Optional[list[TopLogprob]]]

    @classmethod
    def from_json(cls, obj: Any) -> Optional[Logprobs]:
        if not isinstance(obj, dict):
            return None
        return cls(
            token_ids=list(obj.get("token_ids") or []),
            tokens=list(obj.get("tokens") or []),
            token_logprobs=list(obj.get("token_logprobs") or []),
            top_logprobs=[None if top is None else
                          [TopLogprob(int(t["token_id"]), str(t["token"]), float(t["logprob"])) for t in top]
                          for top in obj.get("top_logprobs") or []],
        )


@dataclass(frozen=True)
class RequestError:
    """Why one request has no text: a failure code (``bad_request``, ``cancelled``, ``timeout``...)."""

    code: str
    message: str = ""


@dataclass
class Result:
    """The outcome of one request: ``text`` when it ran, ``error`` when it did not."""

    custom_id: str
    text: Optional[str] = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: Optional[str] = None
    error: Optional[RequestError] = None
    #: The batch that carried the request.
    batch_id: Optional[str] = None
    #: Generated tokens' logprobs, when the request asked for ``logprobs``.
    logprobs: Optional[Logprobs] = None
    #: Prompt tokens' logprobs, when the request asked for ``prompt_logprobs``.
    prompt_logprobs: Optional[Logprobs] = None
    #: A scoring request's scores, one per continuation in order.
    scores: Optional[list[Score]] = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @classmethod
    def from_json(cls, obj: Any, batch_id: Optional[str] = None) -> Result:
        """One element of a RESULT payload."""
        if not isinstance(obj, dict):
            return cls(custom_id="", error=RequestError("bad_result", f"result element is not an object: {obj!r}"),
                       batch_id=batch_id)
        error = obj.get("error")
        return cls(
            custom_id=str(obj.get("custom_id", "")),
            text=obj.get("text"),
            prompt_tokens=int(obj.get("prompt_tokens") or 0),
            completion_tokens=int(obj.get("completion_tokens") or 0),
            finish_reason=obj.get("finish_reason"),
            error=RequestError(str(error.get("code", "")), str(error.get("message", "")))
            if isinstance(error, dict) else None,
            batch_id=batch_id,
            logprobs=Logprobs.from_json(obj.get("logprobs")),
            prompt_logprobs=Logprobs.from_json(obj.get("prompt_logprobs")),
            scores=[Score.from_json(s) for s in obj["scores"]] if isinstance(obj.get("scores"), list) else None,
        )


def decode_results(payload: bytes, batch_id: str) -> list[Result]:
    """The per-request results of a RESULT payload or a FAILED partial payload (may be empty)."""
    if not payload:
        return []
    items = json.loads(payload)
    if not isinstance(items, list):
        raise ValueError("a result payload must be a JSON array")
    return [Result.from_json(item, batch_id) for item in items]


@dataclass
class BatchOutcome:
    """How one batch ended: RESULT (``ok``) or FAILED (``code`` and ``message`` set)."""

    batch_id: str
    #: Dispatches the broker made (1 unless a worker was lost or failed; 0 if never dispatched).
    attempts: int
    #: RESULT: every request's result in request order. FAILED: the partial results, often none.
    results: list[Result]
    #: RESULT: the worker's figures (requests, failed_requests, prompt_tokens, ...); FAILED: {}.
    stats: dict[str, Any] = field(default_factory=dict)
    code: Optional[str] = None
    message: Optional[str] = None

    @property
    def ok(self) -> bool:
        return self.code is None

    @classmethod
    def completed(cls, batch_id: str, attempts: int, stats: bytes, payload: bytes) -> BatchOutcome:
        """From a RESULT; a payload that does not decode becomes a FAILED-like ``bad_result``."""
        try:
            results = decode_results(payload, batch_id)
        except ValueError as error:
            return cls(batch_id, attempts, [], {}, "bad_result", f"the RESULT payload does not decode: {error}")
        try:
            figures = json.loads(stats) if stats else {}
        except ValueError:
            figures = {}
        return cls(batch_id, attempts, results, figures if isinstance(figures, dict) else {})

    @classmethod
    def failed(cls, batch_id: str, attempts: int, code: str, message: str, partial: bytes) -> BatchOutcome:
        """From a FAILED."""
        try:
            results = decode_results(partial, batch_id)
        except ValueError:
            results = []
        return cls(batch_id, attempts, results, {}, code, message)
