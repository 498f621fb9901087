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
    """One request of a batch (a JSON object of the payload array)."""

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
    #: Further fields passed to the engine as they are.
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The payload object: fields that are None are left out."""
        out: dict[str, Any] = {"custom_id": self.custom_id}
        for name in ("prompt", "messages", "max_tokens", "temperature", "top_p", "stop", "seed", "ignore_eos"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        out.update(self.extra)
        return out


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
