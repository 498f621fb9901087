"""``Client``: submit prompt batches to a compass broker and get one result per request."""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import itertools
import json
import queue
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Optional, Union

import zmq

from . import protocol as p
from ._batches import BatchHandle, RequestLike, RunListener, per_request_results, request_json
from ._commands import Abandon, Ack, Cancel, Close, Status, Submission, Submit
from ._loop import ClientLoop
from ._socket import LoopOptions
from .curve import CurveKeys, Key
from .types import BatchOutcome, CompassError, RequestError, Result

ProgressCallback = Callable[[int, int], None]
#: A batch's affinity key: "prefix" (from its first request), an explicit key, or None (no key).
Affinity = Union[int, str, None]


def batch_affinity(affinity: Affinity, items: Sequence[dict[str, Any]]) -> int:
    """The meta affinity key of a batch of request dicts."""
    if affinity is None:
        return 0
    if affinity == "prefix":
        return p.affinity_key(items[0]) if items else 0
    if isinstance(affinity, int) and not isinstance(affinity, bool) and 0 <= affinity < 2**64:
        return affinity
    raise ValueError(f"affinity must be 'prefix', None or an integer key in [0, 2**64), got {affinity!r}")


class Client:
    """A producer connected to one compass broker.

    One background thread owns the ZeroMQ socket: it says HELLO, heartbeats, reconnects when the
    broker goes silent, re-submits what it awaits when the broker restarts, waits out ``busy``
    with back-off, and ACKs every outcome; each batch resolves exactly once. All methods are
    safe to call from several threads.

    Args:
        broker: the broker's frontend endpoint, e.g. ``tcp://127.0.0.1:5555`` or ``ipc:///run/compass``.
        session: groups this client's batches (ids are ``{session}-{n}``); the broker keeps results
            not yet ACKed for whoever says HELLO with the same session. Random when omitted.
        heartbeat_ms, liveness: reconnect after ``heartbeat_ms * liveness`` without a word.
        curve_server_key, curve_public_key, curve_secret_key: Z85 keys for an encrypted connection.
        context: a zmq.Context to use (else the client makes and terminates its own).
        max_busy_backoff_ms: longest wait before re-sending a SUBMIT refused ``busy``.
        max_payload_bytes: largest batch payload sent; a larger batch fails ``too_large`` here
            (the broker's default limit; raise it with the broker's ``--max-payload-bytes``).
    """

    def __init__(self, broker: str, session: Optional[str] = None, *, heartbeat_ms: int = p.DEFAULT_HEARTBEAT_MS,
                 liveness: int = p.DEFAULT_LIVENESS, curve_server_key: Optional[Key] = None,
                 curve_public_key: Optional[Key] = None, curve_secret_key: Optional[Key] = None,
                 context: Optional[zmq.Context[Any]] = None, max_busy_backoff_ms: int = 5000,
                 max_payload_bytes: int = p.DEFAULT_MAX_PAYLOAD_BYTES) -> None:
        self.session = session if session is not None else f"py-{secrets.token_hex(8)}"
        if not 1 <= len(self.session.encode("utf-8")) <= p.MAX_SESSION_BYTES:
            raise ValueError(f"session must be 1-{p.MAX_SESSION_BYTES} bytes")
        if heartbeat_ms < 1 or liveness < 1:
            raise ValueError("heartbeat_ms and liveness must be at least 1")
        options = LoopOptions(broker=broker, session=self.session, heartbeat_ms=heartbeat_ms, liveness=liveness,
                              max_busy_backoff_ms=max_busy_backoff_ms, max_payload_bytes=max_payload_bytes,
                              curve=CurveKeys.from_options(curve_server_key, curve_public_key, curve_secret_key))
        self._own_context = context is None
        self._context = context if context is not None else zmq.Context()
        self._numbers = itertools.count(1)
        self._numbers_lock = threading.Lock()
        self._closed = False
        try:
            self._loop = ClientLoop(options, self._context)
        except BaseException:
            if self._own_context:
                self._context.term()
            raise

    # ------------------------------------------------------------------ runs of many requests

    def submit(self, requests: Iterable[RequestLike], pool: str = "default", *, batch_size: int = 16,
               max_attempts: int = 0, priority: int = 0, deadline_ms: int = 0, window: int = 32,
               progress: Optional[ProgressCallback] = None, ordered: bool = True,
               timeout: Optional[float] = None, affinity: Affinity = "prefix") -> list[Result]:
        """Runs every request and returns one ``Result`` per request.

        Requests are dicts or ``Request`` objects (a missing ``custom_id`` becomes the request's
        index). They are cut into batches of ``batch_size`` with ids ``{session}-{n}``; at most
        ``window`` batches are in flight. Results come in input order (``ordered``) or in
        completion order. ``progress(done, total)`` is called on this thread as requests finish.

        A batch that fails as a whole (or is refused, e.g. ``too_large``) gives each of its
        requests a ``Result.error`` with the batch's code: nothing is lost, nothing raised. A
        refusal no batch can escape (``unknown_pool``, ``bad_version``, a refused CURVE key:
        ``unauthorized``) raises ``CompassError``.
        ``timeout`` (seconds, whole run) raises ``TimeoutError``. On any exception, Ctrl-C
        included, the batches still in flight are cancelled.

        ``affinity`` sets each batch's affinity key: ``"prefix"`` (the default) derives it from the
        batch's first request (``protocol.affinity_key``), so batches that start alike (a few-shot
        preamble, one scoring context) run on one worker and its engine computes the shared prefix
        once; an int is used as the key of every batch; ``None`` sends none.
        """
        pairs = self._run(requests, pool, batch_size=batch_size, max_attempts=max_attempts, priority=priority,
                          deadline_ms=deadline_ms, window=window, progress=progress, timeout=timeout,
                          affinity=affinity)
        if not ordered:
            return [result for _, result in pairs]
        out: dict[int, Result] = dict(pairs)
        return [out[i] for i in range(len(out))]

    def submit_iter(self, requests: Iterable[RequestLike], pool: str = "default", *, batch_size: int = 16,
                    max_attempts: int = 0, priority: int = 0, deadline_ms: int = 0, window: int = 32,
                    progress: Optional[ProgressCallback] = None, timeout: Optional[float] = None,
                    affinity: Affinity = "prefix") -> Iterator[Result]:
        """Like ``submit``, yielding results in completion order as batches finish.

        Closing the iterator early (``break``) cancels the batches still in flight.
        """
        for _, result in self._run(requests, pool, batch_size=batch_size, max_attempts=max_attempts,
                                   priority=priority, deadline_ms=deadline_ms, window=window, progress=progress,
                                   timeout=timeout, affinity=affinity):
            yield result

    async def asubmit(self, requests: Iterable[RequestLike], pool: str = "default", **options: Any) -> list[Result]:
        """``submit`` for asyncio code: runs it on the default executor.

        Cancelling the awaiting task does not stop the run; pass ``timeout`` to bound it.
        """
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, functools.partial(self.submit, list(requests), pool, **options))

    def _run(self, requests: Iterable[RequestLike], pool: str, *, batch_size: int, max_attempts: int,
             priority: int, deadline_ms: int, window: int, progress: Optional[ProgressCallback],
             timeout: Optional[float], affinity: Affinity = "prefix") -> Iterator[tuple[int, Result]]:
        """Yields (input index, result) as batches finish."""
        if batch_size < 1 or window < 1:
            raise ValueError("batch_size and window must be at least 1")
        p.check_submit_fields(f"{self.session}-0", pool)
        items = [request_json(r, i) for i, r in enumerate(requests)]
        total = len(items)
        chunks = [range(start, min(start + batch_size, total)) for start in range(0, total, batch_size)]
        deadline = None if timeout is None else time.monotonic() + timeout
        listener = RunListener()
        in_flight: dict[str, range] = {}
        partial: dict[str, int] = {}  # requests done so far in running batches (PROGRESS)
        finished = reported = 0
        next_chunk = 0
        try:
            while next_chunk < len(chunks) or in_flight:
                while next_chunk < len(chunks) and len(in_flight) < window:
                    indices = chunks[next_chunk]
                    next_chunk += 1
                    batch_id = self._next_batch_id()
                    payload = json.dumps([items[i] for i in indices], ensure_ascii=False).encode("utf-8")
                    meta = p.BatchMeta(len(indices), max_attempts, priority, deadline_ms,
                                       affinity=batch_affinity(affinity, [items[i] for i in indices]))
                    in_flight[batch_id] = indices
                    self._loop.post(Submit(Submission(batch_id, pool, meta, payload, listener)))
                kind, batch_id, data = _next_event(listener.events, deadline, timeout)
                if batch_id not in in_flight:
                    continue
                indices = in_flight[batch_id]
                if kind == "progress":
                    # Max, not latest: a retried batch starts its count again.
                    partial[batch_id] = max(partial.get(batch_id, 0), min(int(data), len(indices)))
                    results: list[Result] = []
                else:
                    del in_flight[batch_id]
                    partial.pop(batch_id, None)
                    custom_ids = [items[i]["custom_id"] for i in indices]
                    if kind == "error":
                        if data.code in p.FATAL_FOR_RUN or data.code == "closed":
                            raise data
                        failure = RequestError(data.code, data.message)
                        results = [Result(custom_id=c, error=failure, batch_id=batch_id) for c in custom_ids]
                    else:
                        results = per_request_results(data, custom_ids)
                    finished += len(indices)
                if progress is not None:
                    done = finished + sum(partial.values())
                    if done > reported:
                        reported = done
                        progress(done, total)
                if results:
                    yield from zip(indices, results)
        finally:
            if in_flight:  # an exception, Ctrl-C, or a closed iterator: nobody wants these any more
                self._loop.post(Abandon(list(in_flight)))

    def _next_batch_id(self) -> str:
        with self._numbers_lock:
            return f"{self.session}-{next(self._numbers)}"

    # ------------------------------------------------------------------ single batches

    def start_batch(self, batch_id: str, requests: Sequence[RequestLike], pool: str = "default", *,
                    max_attempts: int = 0, priority: int = 0, deadline_ms: int = 0,
                    affinity: Affinity = "prefix") -> BatchHandle:
        """Submits one batch under an id of your choosing and returns at once (``affinity`` as in ``submit``)."""
        items = [request_json(r, i) for i, r in enumerate(requests)]
        if not items:
            raise ValueError("a batch needs at least one request")
        p.check_submit_fields(batch_id, pool)
        payload = json.dumps(items, ensure_ascii=False).encode("utf-8")
        handle = BatchHandle(self, batch_id)
        meta = p.BatchMeta(len(items), max_attempts, priority, deadline_ms, affinity=batch_affinity(affinity, items))
        self._loop.post(Submit(Submission(batch_id, pool, meta, payload, handle)))
        return handle

    def submit_batch(self, batch_id: str, requests: Sequence[RequestLike], pool: str = "default", *,
                     max_attempts: int = 0, priority: int = 0, deadline_ms: int = 0,
                     timeout: Optional[float] = None, affinity: Affinity = "prefix") -> BatchOutcome:
        """Submits one batch and waits for its RESULT or FAILED.

        Raises ``CompassError`` when the broker refuses it for good (``busy`` is retried), and
        ``TimeoutError`` after ``timeout`` seconds, having cancelled the batch.
        """
        handle = self.start_batch(batch_id, requests, pool, max_attempts=max_attempts, priority=priority,
                                  deadline_ms=deadline_ms, affinity=affinity)
        try:
            return handle.result(timeout)
        except BaseException:
            if not handle.done():
                self._loop.post(Abandon([batch_id]))
            raise

    # ------------------------------------------------------------------ resume

    def collect(self, batch_ids: Optional[Iterable[str]] = None,
                timeout: Optional[float] = None) -> dict[str, BatchOutcome]:
        """The outcomes of batches an earlier client of this session submitted (after a crash, say).

        On HELLO the broker re-sends every finished result of the session it still holds; later
        ones arrive when they finish. With ``batch_ids``, waits until all of them are here; without,
        waits for those the broker held at HELLO and returns every outcome received so far.
        Taken outcomes are ACKed (the broker forgets them). Raises ``TimeoutError`` (taking nothing)
        when they do not all arrive in time.
        """
        held = self._loop.held
        wanted = None if batch_ids is None else list(dict.fromkeys(batch_ids))

        def ready() -> bool:
            if wanted is None:
                return held.welcome is not None and held.replays_left == 0
            return all(b in held.outcomes for b in wanted)

        with held.cond:
            if not held.cond.wait_for(lambda: held.closed or ready(), timeout):
                missing = [] if wanted is None else [b for b in wanted if b not in held.outcomes]
                raise TimeoutError(f"collect: still waiting after {timeout} s for {missing or 'the held results'}")
            if not ready():
                raise CompassError("closed", "the client was closed")
            taken = {b: held.outcomes.pop(b) for b in (wanted if wanted is not None else list(held.outcomes))}
        if taken:
            self._loop.post(Ack(list(taken)))
        return taken

    def held_batch_ids(self) -> list[str]:
        """Ids of outcomes received for batches this client did not submit, not yet collected."""
        with self._loop.held.cond:
            return list(self._loop.held.outcomes)

    # ------------------------------------------------------------------ the rest

    def status(self, timeout: Optional[float] = 10.0) -> dict[str, Any]:
        """The broker's STATUS document (see docs/protocol.md)."""
        future: concurrent.futures.Future[dict[str, Any]] = concurrent.futures.Future()
        self._loop.post(Status(future))
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            raise TimeoutError(f"no STATUS from the broker within {timeout} s") from None

    def cancel(self, batch_id: str) -> None:
        """Asks the broker to cancel a batch of this session; it ends as FAILED ``cancelled``."""
        self._loop.post(Cancel(batch_id))

    @property
    def welcome(self) -> Optional[dict[str, Any]]:
        """The info of the broker's latest WELCOME (broker_id, heartbeat_ms, pending_results...)."""
        return self._loop.held.welcome

    @property
    def counters(self) -> dict[str, int]:
        """What the client thread did: submits, busy refusals, reconnects, broker_restarts, ..."""
        return dict(self._loop.counters)

    def close(self) -> None:
        """Stops the client. Waiting calls fail with ``CompassError("closed")``; batches the broker
        accepted keep running and their results wait for the next HELLO of this session."""
        if self._closed:
            return
        self._closed = True
        self._loop.post(Close())
        if threading.current_thread() is not self._loop.thread:
            self._loop.thread.join()
        if self._own_context:
            self._context.term()

    def __del__(self) -> None:
        # An unclosed client must not leave its thread running; no join here (GC may run anywhere).
        loop = getattr(self, "_loop", None)
        if loop is not None and not self._closed:
            self._closed = True
            loop.post(Close())

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _next_event(events: queue.Queue[tuple[str, str, Any]], deadline: Optional[float],
                timeout: Optional[float]) -> tuple[str, str, Any]:
    remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
    try:
        return events.get(timeout=remaining)
    except queue.Empty:
        raise TimeoutError(f"submit did not finish within {timeout} s") from None


