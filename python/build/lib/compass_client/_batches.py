"""Batches on the caller's side: handles, run listeners, and mapping outcomes onto requests."""

from __future__ import annotations

import concurrent.futures
import queue
import threading
from collections import defaultdict, deque
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Optional, Union

from .types import BatchOutcome, CompassError, Request, RequestError, Result

if TYPE_CHECKING:
    from .client import Client

RequestLike = Union[Request, Mapping[str, Any]]


class BatchHandle:
    """One submitted batch: ``accepted`` is set once the broker has queued it; ``result()`` waits."""

    def __init__(self, client: Client, batch_id: str) -> None:
        self.batch_id = batch_id
        self.accepted = threading.Event()
        #: The latest (done, total) the broker reported for this batch.
        self.progress: tuple[int, int] = (0, 0)
        self._client = client
        self._future: concurrent.futures.Future[BatchOutcome] = concurrent.futures.Future()

    # Listener, called on the client thread.
    def on_accepted(self, batch_id: str) -> None:
        self.accepted.set()

    def on_progress(self, batch_id: str, done: int, total: int) -> None:
        self.progress = (done, total)

    def on_outcome(self, outcome: BatchOutcome) -> None:
        self._future.set_result(outcome)

    def on_error(self, batch_id: str, error: CompassError) -> None:
        self._future.set_exception(error)

    def done(self) -> bool:
        return self._future.done()

    def result(self, timeout: Optional[float] = None) -> BatchOutcome:
        """The batch's RESULT or FAILED; raises CompassError when refused, TimeoutError on timeout."""
        try:
            return self._future.result(timeout)
        except concurrent.futures.TimeoutError:
            raise TimeoutError(f"batch {self.batch_id} did not finish within {timeout} s") from None

    def cancel(self) -> None:
        """Asks the broker to cancel the batch; its outcome then is FAILED ``cancelled``."""
        self._client.cancel(self.batch_id)


class RunListener:
    """Hands a run's batch events to the caller's thread through a queue."""

    def __init__(self) -> None:
        self.events: queue.Queue[tuple[str, str, Any]] = queue.Queue()

    def on_accepted(self, batch_id: str) -> None:
        pass

    def on_progress(self, batch_id: str, done: int, total: int) -> None:
        self.events.put(("progress", batch_id, done))

    def on_outcome(self, outcome: BatchOutcome) -> None:
        self.events.put(("outcome", outcome.batch_id, outcome))

    def on_error(self, batch_id: str, error: CompassError) -> None:
        self.events.put(("error", batch_id, error))


def request_json(request: RequestLike, index: int) -> dict[str, Any]:
    if isinstance(request, Request):
        item = request.to_json()
    elif isinstance(request, Mapping):
        item = dict(request)
    else:
        raise TypeError(f"request {index} must be a dict or a Request, got {type(request).__name__}")
    custom_id = item.get("custom_id")
    # The wire wants a string; an index is the natural default for lists of prompts.
    item["custom_id"] = str(index) if custom_id is None else str(custom_id)
    return item


def per_request_results(outcome: BatchOutcome, custom_ids: list[str]) -> list[Result]:
    """One result per request of a batch, in request order, whatever the outcome.

    Results are matched by position when the custom ids line up (the protocol's order), else by
    custom id. A request with no result gets an error: the batch's failure code for FAILED,
    ``missing_result`` for a RESULT that lacks it.
    """
    got = outcome.results
    if outcome.ok:
        fallback = RequestError("missing_result", "the batch's RESULT has no entry for this request")
    else:
        fallback = RequestError(outcome.code or "failed", outcome.message or "")
    if len(got) == len(custom_ids) and all(r.custom_id == c for r, c in zip(got, custom_ids)):
        matched: list[Optional[Result]] = list(got)
    else:
        by_id: dict[str, deque[Result]] = defaultdict(deque)
        for r in got:
            by_id[r.custom_id].append(r)
        matched = [by_id[c].popleft() if by_id[c] else None for c in custom_ids]
    return [r if r is not None else Result(custom_id=c, error=fallback, batch_id=outcome.batch_id)
            for r, c in zip(matched, custom_ids)]
