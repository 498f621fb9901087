"""The compass engine protocol for Python engine adapters (see docs/engines.md).

An adapter implements `Backend` (load a model, generate a list of requests) and calls `run`:

    class MyBackend:
        name = "mine"
        arguments = {"dtype": "weights dtype"}          # the --engine-arg keys it takes
        def load(self, settings: EngineSettings) -> str: ...   # returns the `ready` detail
        def generate(self, requests, progress, cancelled) -> list[Result]: ...
        def close(self) -> None: ...

    if __name__ == "__main__":
        run(MyBackend())

Requests come validated (compass_request.py, re-exported here: the rules of docs/protocol.md,
Payloads, tested against spec/requests.json): generation requests (`prompt`, `prompt_token_ids`
or `messages`, optionally asking for `logprobs` and `prompt_logprobs`) and scoring requests
(`is_scoring`: a context and `continuations`), answered with `Result`s that carry `logprobs`,
`prompt_logprobs` (TokenLogprobs) and `scores` (Score) where asked for.

This module does the rest: it reads the worker's messages from fd COMPASS_ENGINE_IN (3) on a
thread of its own, so a `cancel` reaches a running batch; writes events to fd COMPASS_ENGINE_OUT
(4), one JSON object per line, under a lock; validates each request (an invalid one fails alone
with `bad_request`); reports progress; classifies failures (`oom`, `engine_error`, `cancelled`);
sends `fatal` before exiting on a load error; and exits on `shutdown` or end-of-file on fd 3.

A backend that batches continuously (like vLLM) says how much it runs at once, read after `load`:
`capacity`, the sequences it runs in one step (an int 1..65536), and optionally `capacity_tokens`
(its KV cache's tokens). The `ready` message carries them and the worker then admits requests,
not batches: it hands over batches, however many, while the requests inside stay below capacity
plus a queue (docs/engines.md, Admission), so a stream of one-request batches fills the
engine. Each batch's `generate` runs on a thread of its own with its own Progress and cancel
event, and is answered when it ends, in whatever order they end. A backend that also has
`engine_stats()` (a dict with `capacity`, `steps` and `sequence_steps`, cumulative) gets them
and the occupancy over each batch's life in the batch's `stats.engine`. A backend that cannot say
its capacity may set `max_batches` (1..8) instead: up to that many batches at once. A backend
that runs static batches (hf) sets `merge_requests` instead: `generate` is then called on one
thread with every batch waiting, up to that many requests at once, so one-request batches are
batched together; `ready` says it as `capacity`. With none of these, batches run one at a time
on the main thread.

Standard library only, Python 3.10+.
"""

from __future__ import annotations

import gc
import json
import multiprocessing
import os
import queue
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, NoReturn, Protocol, overload
from collections.abc import Callable, Sequence

# The request model lives in compass_request.py; its names are this module's too, so adapters
# import everything from here.
from compass_request import (  # noqa: F401 - re-exported
    MAX_LOGPROBS,
    MAX_TOKENS_LIMIT,
    Request,
    Result,
    Score,
    TokenLogprobs,
    TopLogprob,
    _is_int,
    apply_stop,
    many_encoder,
    parse_request,
    prefetch_encoder,
    scoring_tokens,
)

# Engine-args the worker itself consumes; they are never errors here.
HOST_ARGUMENTS = frozenset({"python", "command"})


class EngineConfigError(Exception):
    """A bad setting (an unknown or malformed engine-arg, a missing model): `fatal startup_failed`."""


class Cancelled(Exception):
    """Raised by a backend that stopped because the batch's cancel flag was set."""


class FatalEngineError(Exception):
    """The engine cannot go on (a rank died, ranks lost step): `fatal` with `code`, then exit."""

    def __init__(self, message: str, code: str = "engine_dead") -> None:
        super().__init__(message)
        self.code = code


def is_out_of_memory(error: BaseException) -> bool:
    """True for host or device out-of-memory errors (torch.cuda.OutOfMemoryError and friends)."""
    if isinstance(error, MemoryError) or "OutOfMemory" in type(error).__name__:
        return True
    return "out of memory" in str(error).lower()


def log(message: str) -> None:
    """A line on stderr, which the worker logs with an [engine] prefix."""
    # One write per line: ranks share the pipe, and print() writes the newline separately.
    # Never raises: when the worker is gone (SIGKILLed), nobody reads stderr and the write fails
    # with EPIPE; a log line must not kill the thread that is taking the engine down.
    try:
        sys.stderr.write(f"compass-engine[{os.getpid()}]: {message}\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


class _EventTrace:
    """COMPASS_HOST_TRACE=FILE: a line per event, `time kind count` (wall-clock seconds), for
    measuring where a request's time goes (bench/gpu/stream.sh): the host writes `read` when a
    batch arrives and `sent` when its answer goes out (count: its requests), and adapters call
    `trace_event` for their own steps (vLLM: `added` into the engine, `reaped` out of it). In a
    pass where every request passes each point once (generation, nothing refused, cancelled or
    failed), the mean time between two points is the difference of the mean times, with no ids
    to match; the report leaves out passes whose counts differ. Off unless set; a trace that cannot be
    written is dropped, never the batches."""

    def __init__(self) -> None:
        self.file: Any = None
        self.lock = threading.Lock()

    def open(self, path: str) -> None:
        try:
            self.file = open(path, "a", buffering=1)  # noqa: SIM115 - lives as long as the process
            log(f"host trace: {path} (COMPASS_HOST_TRACE)")
        except OSError as error:
            log(f"host trace: cannot open {path}: {error}")

    def event(self, kind: str, count: int = 1) -> None:
        if self.file is None:
            return
        with self.lock:
            try:
                self.file.write(f"{time.time():.6f} {kind} {count}\n")
            except (OSError, ValueError, AttributeError) as error:
                log(f"host trace: writing failed ({error}); no more lines")
                self.file = None


_TRACE = _EventTrace()


def trace_event(kind: str, count: int = 1) -> None:
    """An adapter's point in a request's way through the host (see _EventTrace); free when off."""
    if _TRACE.file is not None:
        _TRACE.event(kind, count)


# MARK: Protocol messages


class ToEngine:
    """The types of the worker's messages, on fd 3 (docs/engines.md; spec/protocol.json
    `engine_protocol`, which tests/test_protocol_table.py holds these names to)."""

    BATCH = "batch"
    CANCEL = "cancel"
    SHUTDOWN = "shutdown"


class FromEngine:
    """The types of the engine's messages, on fd 4; the `*_message` functions below build each."""

    READY = "ready"
    PROGRESS = "progress"
    RESULT = "result"
    FAILED = "failed"
    FATAL = "fatal"


# A backend's cumulative `engine_stats()`, as a result's `stats.engine` carries them (with `occupancy`).
ENGINE_COUNTERS = ("capacity", "steps", "sequence_steps")


def ready_message(model: str, detail: str, start_method: str, capacity: int | None = None,
                  capacity_tokens: int | None = None, max_batches: int | None = None) -> dict[str, Any]:
    """`ready`, with those of its optional members that are not None."""
    message: dict[str, Any] = {"type": FromEngine.READY, "model": model, "detail": detail, "start_method": start_method}
    optional = {"capacity": capacity, "capacity_tokens": capacity_tokens, "max_batches": max_batches}
    message.update((key, value) for key, value in optional.items() if value is not None)
    return message


def progress_message(batch_id: str, attempt: int, done: int, total: int, tokens: int) -> dict[str, Any]:
    return {"type": FromEngine.PROGRESS, "batch_id": batch_id, "attempt": attempt, "done": done, "total": total,
            "tokens": tokens}


def result_message(batch_id: str, attempt: int, results: list[Any], stats: dict[str, Any]) -> dict[str, Any]:
    return {"type": FromEngine.RESULT, "batch_id": batch_id, "attempt": attempt, "results": results, "stats": stats}


def failed_message(batch_id: str, attempt: int, code: str, retryable: bool, message: str) -> dict[str, Any]:
    return {"type": FromEngine.FAILED, "batch_id": batch_id, "attempt": attempt, "code": code, "retryable": retryable,
            "message": message}


def fatal_message(code: str, message: str) -> dict[str, Any]:
    return {"type": FromEngine.FATAL, "code": code, "message": message}


# MARK: Settings


class EngineArgs:
    """The `--engine-arg key=value` settings (COMPASS_ENGINE_ARGS), with typed accessors."""

    def __init__(self, values: dict[str, str], engine: str, accepted: dict[str, str]) -> None:
        self.values = {k: v for k, v in values.items() if k not in HOST_ARGUMENTS}
        self.engine = engine
        self.accepted = accepted
        unknown = sorted(set(self.values) - set(accepted))
        if unknown:
            takes = ", ".join(f"{k} ({d})" for k, d in sorted(accepted.items())) or "none"
            raise EngineConfigError(
                f"the {engine} engine has no argument {unknown[0]!r}; it takes: {takes}"
            )

    def _bad(self, key: str, expected: str) -> EngineConfigError:
        return EngineConfigError(f"--engine-arg {key}={self.values[key]}: expected {expected}")

    # Each accessor returns `default` when the key is absent (typed: no None with a default).
    @overload
    def string(self, key: str, default: str) -> str: ...
    @overload
    def string(self, key: str, default: None = None) -> str | None: ...
    def string(self, key: str, default: str | None = None) -> str | None:
        return self.values.get(key, default)

    @overload
    def choice(self, key: str, choices: Sequence[str], default: str) -> str: ...
    @overload
    def choice(self, key: str, choices: Sequence[str], default: None = None) -> str | None: ...
    def choice(self, key: str, choices: Sequence[str], default: str | None = None) -> str | None:
        if key not in self.values:
            return default
        value = self.values[key]
        if value not in choices:
            raise self._bad(key, "one of " + ", ".join(choices))
        return value

    @overload
    def integer(self, key: str, default: int, minimum: int | None = None) -> int: ...
    @overload
    def integer(self, key: str, default: None = None, minimum: int | None = None) -> int | None: ...
    def integer(self, key: str, default: int | None = None, minimum: int | None = None) -> int | None:
        if key not in self.values:
            return default
        try:
            value = int(self.values[key])
        except ValueError:
            raise self._bad(key, "an integer") from None
        if minimum is not None and value < minimum:
            raise self._bad(key, f"an integer >= {minimum}")
        return value

    @overload
    def number(self, key: str, default: float, minimum: float | None = None) -> float: ...
    @overload
    def number(self, key: str, default: None = None, minimum: float | None = None) -> float | None: ...
    def number(self, key: str, default: float | None = None, minimum: float | None = None) -> float | None:
        if key not in self.values:
            return default
        try:
            value = float(self.values[key])
        except ValueError:
            raise self._bad(key, "a number") from None
        if minimum is not None and value < minimum:
            raise self._bad(key, f"a number >= {minimum}")
        return value

    @overload
    def boolean(self, key: str, default: bool) -> bool: ...
    @overload
    def boolean(self, key: str, default: None = None) -> bool | None: ...
    def boolean(self, key: str, default: bool | None = None) -> bool | None:
        if key not in self.values:
            return default
        value = self.values[key].strip().lower()
        if value in ("1", "true", "yes", "on"):
            return True
        if value in ("0", "false", "no", "off"):
            return False
        raise self._bad(key, "true or false")


@dataclass
class EngineSettings:
    """What the worker tells the engine through the environment."""

    model: str
    tp: int
    gpus: list[int]
    args: EngineArgs

    @classmethod
    def from_environment(cls, engine: str, accepted: dict[str, str]) -> EngineSettings:
        try:
            raw = json.loads(os.environ.get("COMPASS_ENGINE_ARGS") or "{}")
        except json.JSONDecodeError as error:
            raise EngineConfigError(f"COMPASS_ENGINE_ARGS is not JSON: {error}") from None
        if not isinstance(raw, dict) or not all(isinstance(v, str) for v in raw.values()):
            raise EngineConfigError("COMPASS_ENGINE_ARGS must be a JSON object of strings")
        try:
            tp = int(os.environ.get("COMPASS_TP") or "1")
            gpus = [int(g) for g in (os.environ.get("COMPASS_GPUS") or "").split(",") if g.strip()]
        except ValueError:
            raise EngineConfigError("COMPASS_TP must be an integer and COMPASS_GPUS a list like 0,1") from None
        if tp < 1:
            raise EngineConfigError(f"COMPASS_TP={tp}: expected 1 or more")
        return cls(os.environ.get("COMPASS_MODEL", ""), tp, gpus, EngineArgs(raw, engine, accepted))


# MARK: Backend interface


class Progress:
    """Progress of one batch, sent to the worker when it moves (at most every `interval`).

    Backends call `add` from any thread; one ticker thread (`_Ticker`, shared by every batch of the
    process, so a worker holding hundreds of one-request batches does not make hundreds of
    threads) sends what moved since the last message, so a backend may call `add` once per
    decoding step without flooding the pipe. Nothing is sent while nothing moves: the worker's
    watchdog is meant to catch an engine that is stuck.
    """

    def __init__(self, send: Callable[[dict[str, Any]], None], batch_id: str, attempt: int,
                 total: int, interval: float = 0.5) -> None:
        self._send, self._batch_id, self._attempt, self.total = send, batch_id, attempt, total
        self._interval = interval
        self._lock = threading.Lock()
        self.done = 0
        self.tokens = 0
        self._sent = (0, 0)
        self._sent_at = 0.0
        self._urgent = False  # a request finished since the last message: news worth sending soon
        self._closed = False

    def add(self, done: int = 0, tokens: int = 0) -> None:
        if not done and not tokens:  # nothing moved (a scoring continuation run again, say)
            return
        with self._lock:
            self.done += done
            self.tokens += tokens
            if done:
                self._urgent = True
        _Ticker.shared().moved(self, urgent=done > 0)

    def _flush(self, now: float) -> bool:
        """Sends what moved, when `interval` passed since the last message (0.1 s after a request
        finished). Called by the ticker only; True while news waits for its time. Nothing is sent
        once every request is done: the batch's result follows, and says more (a progress message
        for each one-request batch just before its result doubled the messages to the worker)."""
        with self._lock:  # held while sending, so nothing is sent after close()
            moved = (self.done, self.tokens)
            if self._closed or moved == self._sent or self.done >= self.total:
                return False
            if now - self._sent_at < (min(0.1, self._interval) if self._urgent else self._interval):
                return True
            self._sent, self._sent_at, self._urgent = moved, now, False
            self._send(progress_message(self._batch_id, self._attempt, min(self.done, self.total), self.total, self.tokens))
            return False

    def close(self) -> None:
        with self._lock:
            self._closed = True
        _Ticker.shared().forget(self)


class _Ticker:
    """The one thread that sends the news of every Progress that moved (at most ~10 messages a
    second each). It looks only at those that moved since it last looked (a worker may hold
    thousands of batches, most of them with nothing new), not at every open one."""

    _instance: _Ticker | None = None
    _instance_lock = threading.Lock()
    TICK = 0.1

    @classmethod
    def shared(cls) -> _Ticker:
        if cls._instance is not None:  # once made, read without the lock (every add calls this)
            return cls._instance
        with cls._instance_lock:
            if cls._instance is None:
                cls._instance = _Ticker()
            return cls._instance

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._moved: dict[int, Progress] = {}  # news not sent yet, by id(): an ordered set
        self._wake = threading.Event()
        threading.Thread(target=self._loop, name="compass-progress", daemon=True).start()

    def moved(self, progress: Progress, urgent: bool) -> None:
        with self._lock:
            self._moved[id(progress)] = progress
        if urgent:
            self._wake.set()

    def forget(self, progress: Progress) -> None:
        with self._lock:
            self._moved.pop(id(progress), None)

    def _loop(self) -> None:
        while True:
            self._wake.wait(self.TICK)
            self._wake.clear()
            with self._lock:
                pending, self._moved = self._moved, {}
            now = time.monotonic()
            waiting = []
            for progress in pending.values():
                try:
                    if progress._flush(now):
                        waiting.append(progress)
                except Exception as error:  # noqa: BLE001 - one batch's message must not stop the others'
                    log(f"sending progress failed: {error}")
            if waiting:  # too soon after their last message: looked at again next time
                with self._lock:
                    for progress in waiting:
                        self._moved.setdefault(id(progress), progress)
            time.sleep(0.01)  # several finishing requests make one round of messages, not many


class Backend(Protocol):
    """What an adapter implements. Optional members, looked up with getattr: `close()`, to release
    child processes and sockets before exit; `start_method`, the multiprocessing start method of
    the processes it starts (for the `ready` message); `capacity` (and `capacity_tokens`), the
    sequences it runs at once, or `max_batches`, how many batches it takes at once (read after
    `load`; default 1 batch); `engine_stats()`, its cumulative step counters. With `capacity` or
    `max_batches` above 1, `generate` is called from several threads at once, one per batch, and
    must be thread-safe. `start(requests, progress, cancelled, done)`, with `capacity`: instead
    of `generate`, the host hands each batch over and returns; the backend calls `done(results,
    None)` or `done(None, error)` exactly once, from any thread, when the batch is over (raise
    Cancelled as the error when `cancelled` stopped it, FatalEngineError when the engine is gone).
    `start` runs on the host's main thread, one batch after another."""

    name: str
    arguments: dict[str, str]  # the --engine-arg keys it takes, with a word on each

    def load(self, settings: EngineSettings) -> str:
        """Loads the model; returns the `ready` message's detail. Raise EngineConfigError for bad settings."""
        ...

    def generate(self, requests: list[Request], progress: Progress, cancelled: threading.Event) -> list[Result]:
        """One result per request, in order. Check `cancelled` between steps and raise Cancelled.

        Every request kind comes here, scoring ones (`request.is_scoring`) included. A result
        carries `logprobs` only when the request asked for them (`request.logprobs` is not None),
        `prompt_logprobs` likewise, and `scores` (one per continuation) for a scoring request,
        whose result is `Result(custom_id, "", context_tokens, 0, "score", scores=[...])`. A
        backend that cannot do what a request asks (scoring, logprobs, token-id prompts) fails
        that request alone with code `unsupported`, never a guess:
        `Result.failure(custom_id, "request ID: ...", "unsupported")`. The fields may be given
        as TokenLogprobs and Score objects or as their JSON shape (dicts)."""
        ...


# MARK: The protocol loop


@dataclass
class _Batch:
    batch_id: str
    attempt: int
    requests: Any
    cancelled: threading.Event = field(default_factory=threading.Event)
    cancel_requested: bool = False  # by the worker's cancel, rather than by shutdown

    @property
    def key(self) -> tuple[str, int]:
        return (self.batch_id, self.attempt)


CAPACITY_LIMIT = 65_536  # the protocol's bound on an engine's sequence capacity (EngineCapacity.sequencesLimit)
def _request_count(batch: _Batch) -> int:
    return len(batch.requests) if isinstance(batch.requests, list) else 1


class _Member:
    """One batch of a `generate` call: its requests as parsed (invalid ones already answered)."""

    def __init__(self, batch: _Batch, parsed: list[Request | Result], progress: Progress) -> None:
        self.batch, self.parsed, self.progress = batch, parsed, progress
        self.valid = [p for p in parsed if isinstance(p, Request)]


@dataclass
class _Call:
    """One call of the backend over admitted batches: what `end_call` needs to answer each."""

    batches: list[_Batch]
    members: list[_Member]
    live: list[_Member]  # those not cancelled before the call
    requests: list[Request]
    progress: Any
    cancelled: Any
    started: float
    counters_before: dict[str, int] | None


class _SharedProgress:
    """The Progress of a call over several batches. A backend reports counts, not which request
    moved, so finished requests are counted against the batches in order (each up to its own
    requests) and tokens against the batch being counted: each batch's counts are right when the
    call ends, and in between their sum is, which is what the worker admits by."""

    def __init__(self, members: list[_Member]) -> None:
        self.members = members
        self.lock = threading.Lock()
        self.at = 0  # the member that the next finished request counts against
        self.left = len(members[0].valid) if members else 0

    def add(self, done: int = 0, tokens: int = 0) -> None:
        with self.lock:
            if tokens:
                self.members[self.at].progress.add(tokens=tokens)
            while done > 0:
                take = min(done, self.left)
                if take:
                    self.members[self.at].progress.add(done=take)
                    done -= take
                    self.left -= take
                if self.left == 0:
                    if self.at + 1 >= len(self.members):
                        break
                    self.at += 1
                    self.left = len(self.members[self.at].valid)


class _AllCancelled:
    """The cancel event of a call over several batches: set when every one of them is cancelled
    (a batch cancelled alone gets `cancelled` when the call ends, and its results are dropped)."""

    def __init__(self, events: list[threading.Event]) -> None:
        self.events = events

    def is_set(self) -> bool:
        return all(e.is_set() for e in self.events)

    def wait(self, timeout: float | None = None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.is_set():
            left = 0.01 if deadline is None else min(0.01, deadline - time.monotonic())
            if left <= 0:
                return False
            self.events[0].wait(left)
        return True


EOF_GRACE_SECONDS = 10.0  # after end of file on fd 3, the longest the engine lives on


class EngineHost:
    """Runs one backend under the protocol: ready, then batches (up to the backend's `max_batches`
    at once), until shutdown or EOF.

    Threads: the reader (fd 3: queues batches in `inbox`, sets cancel events at once, stops on
    shutdown or EOF); the main thread, which loads the model and then takes batches from `inbox`:
    with `max_batches` 1 it runs each itself, one after another; with more it runs each on a batch
    thread of its own, taking the next from `inbox` only while fewer than `max_batches` run. Each
    batch answers (`result` or `failed`) from the thread that ran it; `send` serialises the writes.
    `state_lock` guards `running`, `early_cancels` and `stopping`.
    """

    def __init__(self, backend: Backend, in_fd: int, out_fd: int) -> None:
        self.backend = backend
        self.in_fd, self.out_fd = in_fd, out_fd
        self.write_lock = threading.Lock()
        self.silenced = False  # after `fatal`, nothing more is sent (under write_lock)
        self.state_lock = threading.Lock()
        self.state_changed = threading.Condition(self.state_lock)  # `started_calls` went down
        self.started_calls = 0  # batches handed to a backend's `start`, not yet answered
        self.inbox: queue.Queue[_Batch | None] = queue.Queue()
        self.running: dict[int, _Batch] = {}  # admitted and not yet answered, by id(): an ordered set
        self.early_cancels: set[tuple[str, int]] = set()
        self.loaded = False
        self.stopping = False
        self.max_batches = 1

    def send(self, message: dict[str, Any], final: bool = False) -> None:
        """Writes one event. `final` (a `fatal`): nothing is sent after it, from any thread."""
        data = (json.dumps(message, ensure_ascii=False, separators=(",", ":")) + "\n").encode()
        with self.write_lock:
            if self.silenced:
                return
            self.silenced = final
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(self.out_fd, view):]
            except (BrokenPipeError, OSError) as error:
                log(f"the worker's event pipe is gone ({error}); exiting")
                _exit(0)

    # The reader thread: cancels act at once; batches queue for the main thread.
    def read_loop(self) -> None:
        try:
            with os.fdopen(self.in_fd, "rb", buffering=1 << 16, closefd=False) as stream:
                for line in stream:
                    if line.strip():
                        self.handle_line(line)
        except OSError as error:
            log(f"reading fd {self.in_fd} failed: {error}")
        finally:  # whatever ended the loop: the engine must not outlive its worker
            self.stop("end of file on the request pipe", hard_deadline=EOF_GRACE_SECONDS)

    def handle_line(self, line: bytes) -> None:
        try:
            message = json.loads(line)
            kind = message["type"]
            key = (str(message.get("batch_id", "")), int(message.get("attempt") or 0))
        except (ValueError, KeyError, TypeError, AttributeError):
            log(f"ignoring a line that is not a protocol message: {line[:200]!r}")
            return
        if kind == ToEngine.BATCH:
            requests = message.get("requests")
            trace_event("read", len(requests) if isinstance(requests, list) else 0)
            self.inbox.put(_Batch(key[0], key[1], requests))
        elif kind == ToEngine.CANCEL:
            with self.state_lock:
                matching = [b for b in self.running.values() if b.key == key]
                for batch in matching:
                    batch.cancel_requested = True
                    batch.cancelled.set()
                if not matching:  # not started yet (or already answered): remember it, bounded
                    if len(self.early_cancels) > 1000:
                        self.early_cancels.clear()
                    self.early_cancels.add(key)
        elif kind == ToEngine.SHUTDOWN:
            self.stop("shutdown")
        else:
            log(f"ignoring unknown message type {kind!r}")

    def stop(self, why: str, hard_deadline: float | None = None) -> None:
        """Cancels what runs and ends the serve loop. `hard_deadline` (end of file: nobody waits
        for answers any more): the process exits after that many seconds whatever still runs (a
        backend call that ignores its cancel event must not keep the GPUs of a dead worker)."""
        if hard_deadline is not None:
            def give_up() -> None:
                log(f"still running {hard_deadline:.0f}s after {why}; exiting")
                _exit(0)
            timer = threading.Timer(hard_deadline, give_up)
            timer.daemon = True
            timer.start()
        with self.state_lock:
            if self.stopping:
                return
            self.stopping = True
            for batch in self.running.values():
                batch.cancelled.set()
            loaded = self.loaded
        log(f"stopping: {why}")
        if not loaded:
            _exit(0)  # nothing to finish: do not wait for a model that is still loading
        self.inbox.put(None)

    def admit(self, batch: _Batch) -> None:
        """Makes `batch` one of the running ones, so cancel and stop reach it; on the main thread,
        before the batch's own thread starts, so that a stop in between cannot miss it."""
        with self.state_lock:
            self.running[id(batch)] = batch
            if batch.key in self.early_cancels:
                self.early_cancels.discard(batch.key)
                batch.cancel_requested = True
                batch.cancelled.set()
            if self.stopping:
                batch.cancelled.set()

    def run_batch(self, batch: _Batch) -> None:
        """Runs one admitted batch to its answer (on the main thread, or on a batch thread)."""
        self.run_batches([batch])

    def run_batches(self, batches: list[_Batch]) -> None:
        """Runs admitted batches to their answers with one `generate` call over all their requests
        (several only for a backend that merges batches: `merge_requests`). Each batch is answered
        on its own: its results, or its failure, or `cancelled` when the worker cancelled it before
        the call ended."""
        call = self.begin_call(batches)
        try:
            produced = self.backend.generate(call.requests, call.progress, call.cancelled) if call.requests else []
        except Exception as error:  # noqa: BLE001 - every failure becomes each batch's answer
            self.end_call(call, None, error)
        else:
            self.end_call(call, produced, None)

    def start_batch(self, batch: _Batch) -> None:
        """Hands an admitted batch to a backend with `start` and returns at once: the backend
        answers through `end_call` when the batch's requests are done (from its own thread)."""
        call = self.begin_call([batch])
        if not call.requests:
            self.end_call(call, [], None)
            return
        with self.state_lock:
            self.started_calls += 1

        def done(produced: list[Result] | None, error: BaseException | None) -> None:
            try:
                self.end_call(call, produced, error)
            finally:
                with self.state_lock:
                    self.started_calls -= 1
                    self.state_changed.notify_all()

        try:
            self.backend.start(call.requests, call.progress, call.cancelled, done)  # type: ignore[attr-defined]
        except Exception as error:  # noqa: BLE001 - refused before it started: this batch's answer
            done(None, error)

    def begin_call(self, batches: list[_Batch]) -> _Call:
        """Parses the batches' requests (bad ones are answered at once), answers those cancelled
        already, and gathers the rest into one call."""
        started = time.monotonic()
        members: list[_Member] = []
        try:
            for batch in batches:
                if not isinstance(batch.requests, list):
                    self.send(failed_message(batch.batch_id, batch.attempt, "bad_request", False,
                                             "the batch's requests are not a JSON array"))
                    continue
                parsed = [parse_request(i, raw) for i, raw in enumerate(batch.requests)]
                member = _Member(batch, parsed, Progress(self.send, batch.batch_id, batch.attempt, len(parsed)))
                member.progress.add(done=len(parsed) - len(member.valid))
                members.append(member)
            counters_before = self.engine_counters()
            live = []
            for member in members:
                if member.batch.cancelled.is_set():
                    member.progress.close()
                    self.answer_failure(member.batch, Cancelled())
                else:
                    live.append(member)
        except BaseException:
            self.release(batches, members)
            raise
        requests = [r for m in live for r in m.valid]
        if len(live) == 1:
            progress: Any = live[0].progress
            cancelled: Any = live[0].batch.cancelled
        else:
            progress, cancelled = _SharedProgress(live), _AllCancelled([m.batch.cancelled for m in live])
        return _Call(batches, members, live, requests, progress, cancelled, started, counters_before)

    def end_call(self, call: _Call, produced: list[Result] | None, error: BaseException | None) -> None:
        """Answers each batch of a call: its results, or the call's failure (`error`)."""
        try:
            for member in call.live:  # no progress may follow a batch's answer
                member.progress.close()
            if error is None and produced is not None and len(produced) != len(call.requests):
                error = RuntimeError(f"the backend returned {len(produced)} results for {len(call.requests)} requests")
            if error is not None or produced is None:
                error = error or RuntimeError("the backend answered neither results nor an error")
                if isinstance(error, FatalEngineError):
                    self.fatal(error.code, str(error))
                if not isinstance(error, Cancelled):
                    traceback.print_exception(type(error), error, error.__traceback__, file=sys.stderr)
                for member in call.live:
                    self.answer_failure(member.batch, error)
                return
            for member in call.live:
                mine, produced = produced[:len(member.valid)], produced[len(member.valid):]
                if len(call.live) > 1 and member.batch.cancelled.is_set():  # cancelled alone, while the others ran
                    self.answer_failure(member.batch, Cancelled())
                    continue
                it = iter(mine)
                results = [next(it) if isinstance(p, Request) else p for p in member.parsed]
                self.send(result_message(member.batch.batch_id, member.batch.attempt, [r.to_json() for r in results],
                                         self.batch_stats(call.started, results, call.counters_before)))
                trace_event("sent", len(results))
        finally:
            self.release(call.batches, call.members)

    def release(self, batches: list[_Batch], members: list[_Member]) -> None:
        for member in members:
            member.progress.close()  # (closed already, unless parsing failed half way)
        with self.state_lock:
            for batch in batches:
                self.running.pop(id(batch), None)

    def answer_failure(self, batch: _Batch, error: BaseException) -> None:
        """A batch's `failed`: `cancelled` when the worker cancelled it (nothing when shutdown or EOF
        stopped it: nobody waits for its answer), else the error's code (`oom`, `engine_error`)."""
        if isinstance(error, Cancelled) or batch.cancelled.is_set():
            if batch.cancel_requested:
                self.send(failed_message(batch.batch_id, batch.attempt, "cancelled", False, "cancelled"))
            return
        code = "oom" if is_out_of_memory(error) else "engine_error"
        self.send(failed_message(batch.batch_id, batch.attempt, code, True, f"{type(error).__name__}: {error}"[:2000]))

    def engine_counters(self) -> dict[str, int] | None:
        """The backend's cumulative step counters (`engine_stats()`), where it keeps them."""
        stats = getattr(self.backend, "engine_stats", None)
        if stats is None:
            return None
        try:
            counters = stats()
            if counters is None:
                return None
            return {key: int(counters[key]) for key in ENGINE_COUNTERS}
        except Exception as error:  # noqa: BLE001 - statistics never fail a batch
            log(f"engine_stats() failed: {error}")
            return None

    def batch_stats(self, started: float, results: list[Result], before: dict[str, int] | None) -> dict[str, Any]:
        stats: dict[str, Any] = {"engine_ms": round((time.monotonic() - started) * 1000, 3),
                                 "requests": len(results),
                                 "failed_requests": sum(1 for r in results if r.error),
                                 "prompt_tokens": sum(r.prompt_tokens for r in results),
                                 "completion_tokens": sum(r.completion_tokens for r in results)}
        after = self.engine_counters()
        if after is not None:
            engine: dict[str, Any] = dict(after)
            steps = after["steps"] - before["steps"] if before else 0
            if before and steps > 0 and after["capacity"] > 0:
                engine["occupancy"] = round((after["sequence_steps"] - before["sequence_steps"])
                                            / (steps * after["capacity"]), 4)
            stats["engine"] = engine
        return stats

    def serve(self, settings: EngineSettings) -> NoReturn:
        reader = threading.Thread(target=self.read_loop, name="compass-reader", daemon=True)
        reader.start()
        try:
            detail = self.backend.load(settings)
            max_batches = getattr(self.backend, "max_batches", 1)
            if not _is_int(max_batches) or max_batches < 1:
                raise EngineConfigError(f"the {self.backend.name} backend says max_batches={max_batches!r}; "
                                        "expected an integer >= 1")
            capacity = getattr(self.backend, "capacity", None)
            if capacity is not None and (not _is_int(capacity) or not 1 <= capacity <= CAPACITY_LIMIT):
                raise EngineConfigError(f"the {self.backend.name} backend says capacity={capacity!r}; "
                                        f"expected an integer from 1 to {CAPACITY_LIMIT}")
            merge = getattr(self.backend, "merge_requests", None)
            if merge is not None and (not _is_int(merge) or not 1 <= merge <= CAPACITY_LIMIT):
                raise EngineConfigError(f"the {self.backend.name} backend says merge_requests={merge!r}; "
                                        f"expected an integer from 1 to {CAPACITY_LIMIT}")
            if merge is not None and capacity is None:
                capacity = merge  # the requests one call takes: as many as the worker should keep here
            capacity_tokens = getattr(self.backend, "capacity_tokens", None) if capacity is not None else None
            if capacity_tokens is not None and (not _is_int(capacity_tokens) or capacity_tokens < 1):
                log(f"ignoring capacity_tokens={capacity_tokens!r}: expected an integer >= 1")
                capacity_tokens = None
        except BaseException as error:  # noqa: BLE001 - a load failure of any kind is fatal
            if isinstance(error, EngineConfigError):
                log(f"cannot start: {error}")
            else:
                traceback.print_exc(file=sys.stderr)
            code = "oom" if is_out_of_memory(error) else "startup_failed"
            message = str(error) if isinstance(error, EngineConfigError) else f"{type(error).__name__}: {error}"
            self.send(fatal_message(code, message[:2000]), final=True)
            _exit(1)
        self.max_batches = max_batches
        # The loaded engine's objects (torch, the model's modules, the engine's own: hundreds of
        # thousands) are never garbage; a full collection walks all of them while holding the GIL,
        # which stalled the vLLM adapter's stepper for ~0.5 s while a burst of one-request batches
        # came in (bench/gpu/results/2026-12-02-h200-stream-queue). Frozen, collections scan only
        # what is allocated from here on, as vLLM's own server does after it starts (freeze_gc_heap).
        gc.collect()
        gc.freeze()
        log(f"garbage collector: the loaded engine's {gc.get_freeze_count()} objects frozen")
        # The start method of the processes the engine starts: the backend's word for it (vLLM
        # has its own setting), else this interpreter's multiprocessing default (run() sets spawn).
        method = getattr(self.backend, "start_method", None) or multiprocessing.get_start_method(allow_none=True) or "none"
        with self.state_lock:
            self.loaded = True
            stopping = self.stopping
        if stopping:
            self.inbox.put(None)
        if capacity is not None:
            # The worker admits requests up to the capacity (and a queue), so any number of
            # batches may be inside at once; the worker, not this process, bounds them.
            ready = ready_message(settings.model, detail, method, capacity=capacity, capacity_tokens=capacity_tokens)
            admits = f"capacity {capacity} sequences" + (f", {capacity_tokens} KV-cache tokens" if capacity_tokens else "")
        else:
            # 1 is the protocol's default: the message stays as it always was
            ready = ready_message(settings.model, detail, method, max_batches=max_batches if max_batches != 1 else None)
            admits = f"max_batches {max_batches}"
        log(f"ready: {detail}; multiprocessing start method {method}; {admits}")
        self.send(ready)
        if merge is not None:
            self.serve_merged(merge)
        elif capacity is not None and callable(getattr(self.backend, "start", None)):
            self.serve_started()
        elif capacity is not None:
            self.serve_concurrently(None)
        elif max_batches == 1:
            self.serve_one_at_a_time()
        else:
            self.serve_concurrently(max_batches)
        self.close_backend()
        _exit(0)

    def serve_one_at_a_time(self) -> None:
        while (batch := self.inbox.get()) is not None and not self.stopping:
            self.admit(batch)
            self.run_batch(batch)

    def serve_merged(self, limit: int) -> None:
        """One `generate` call at a time over every batch waiting, up to `limit` requests (a larger
        batch goes alone): a backend that runs static batches (hf) so batches one-request
        batches together, as a continuously batching engine admits them between steps."""
        waiting: _Batch | None = None
        while True:
            batch = waiting if waiting is not None else self.inbox.get()
            waiting = None
            if batch is None or self.stopping:
                break
            group, count = [batch], _request_count(batch)
            while count < limit:
                try:
                    more = self.inbox.get_nowait()
                except queue.Empty:
                    break
                if more is None:  # stop: after this call
                    self.inbox.put(None)
                    break
                if count + _request_count(more) > limit:
                    waiting = more  # the first of the next call
                    break
                group.append(more)
                count += _request_count(more)
            for member in group:
                self.admit(member)
            self.run_batches(group)

    def serve_started(self, stop_wait: float = 30.0) -> None:
        """For a backend with `start` and a capacity (a continuously batching engine with a loop of
        its own): the main thread parses each batch and hands it to the backend, which answers
        from its own thread. No thread per batch: a stream of hundreds of one-request batches
        costs a parse and a hand-over each, not a thread each contending for the GIL with the
        engine's loop."""
        while True:
            batch = self.inbox.get()
            if batch is None or self.stopping:
                break
            self.admit(batch)
            self.start_batch(batch)
        # Stopping: every running batch's cancel event is set; give them a bounded time to end.
        deadline = time.monotonic() + stop_wait
        with self.state_lock:
            while self.started_calls and (left := deadline - time.monotonic()) > 0:
                self.state_changed.wait(left)
            if self.started_calls:
                log(f"{self.started_calls} batches did not stop within {stop_wait:.0f}s; closing anyway")

    def serve_concurrently(self, max_batches: int | None, stop_wait: float = 30.0) -> None:
        """A batch thread for each batch, up to `max_batches` at once (None: as many as the worker
        sends, which it bounds by the engine's capacity); the main thread only hands batches out."""
        slots = threading.BoundedSemaphore(max_batches) if max_batches is not None else None
        threads: list[threading.Thread] = []

        def run_in_slot(batch: _Batch) -> None:
            try:
                self.run_batch(batch)
            finally:
                if slots is not None:
                    slots.release()

        while True:
            if slots is not None:
                slots.acquire()  # a batch stays in the inbox (not started) while every slot is busy
            batch = self.inbox.get()
            if batch is None or self.stopping:
                break
            self.admit(batch)
            thread = threading.Thread(target=run_in_slot, args=(batch,), daemon=True,
                                      name=f"compass-batch-{batch.batch_id}-{batch.attempt}")
            threads = [t for t in threads if t.is_alive()]
            threads.append(thread)
            thread.start()
        # Stopping: every running batch's cancel event is set; give them a bounded time to end
        # (they are not answered) before the backend is closed under them.
        deadline = time.monotonic() + stop_wait
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
            if thread.is_alive():
                log(f"{thread.name} did not stop within {stop_wait:.0f}s; closing anyway")

    def fatal(self, code: str, message: str) -> NoReturn:
        """Sends `fatal` (the first one only: nothing is sent after it) and ends the process."""
        log(f"fatal ({code}): {message}")
        self.send(fatal_message(code, message[:2000]), final=True)
        _exit(1)

    def close_backend(self) -> None:
        """Gives the backend a bounded time to release its resources (child ranks, sockets)."""
        close = getattr(self.backend, "close", None)
        if close is None:
            return
        closer = threading.Thread(target=close, name="compass-close", daemon=True)
        closer.start()
        closer.join(30)


_HOST: EngineHost | None = None


def fatal_exit(code: str, message: str) -> NoReturn:
    """Sends `fatal` and ends the process; from any thread (a batch thread whose backend raised
    FatalEngineError, or a monitor that saw a tensor-parallel rank die). Only the first `fatal`
    is sent, and nothing after it, however many threads get here."""
    if _HOST is not None:
        _HOST.fatal(code, message)
    log(f"fatal ({code}): {message}")
    _exit(1)


_EXITING = threading.Lock()


def _exit(code: int) -> NoReturn:
    # os._exit, not sys.exit: libraries (torch, vLLM) leave non-daemon threads and atexit hooks
    # that can hang an interpreter's shutdown, and the worker waits for this process to end.
    # What atexit would do for multiprocessing's objects (queues, locks), so that its resource
    # tracker does not report them as leaked; child processes are the worker's to kill. On a
    # thread, with a time limit: a queue's finalizer may wait for a reader that is gone.
    # One thread ends the process; any other that gets here (two batches hitting a fatal error
    # at once) waits for it.
    if not _EXITING.acquire(blocking=False):
        threading.Event().wait()
    from multiprocessing import util

    run_finalizers = getattr(util, "_run_finalizers")  # noqa: B009 - private, but what atexit itself calls
    finalizers = threading.Thread(target=run_finalizers, args=(0,), daemon=True)
    finalizers.start()
    finalizers.join(5)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


def run(backend: Backend) -> NoReturn:
    """The engine process's main: read the environment, load, serve batches until told to stop."""
    # Libraries that start processes (torch.multiprocessing, vLLM) must never fork a process
    # that may hold CUDA state or our threads: spawn, whatever the platform default.
    multiprocessing.set_start_method("spawn", force=True)
    # COMPASS_SWITCH_INTERVAL: seconds a Python thread holds the GIL before another that waits
    # gets it (sys.setswitchinterval; 0.005 by default), for measuring hand-over latency between
    # the host's threads and the engine's loop (bench/gpu/stream.sh ALT_WORKER_ENV).
    if os.environ.get("COMPASS_SWITCH_INTERVAL"):
        try:
            sys.setswitchinterval(float(os.environ["COMPASS_SWITCH_INTERVAL"]))
            log(f"GIL switch interval {sys.getswitchinterval()} s (COMPASS_SWITCH_INTERVAL)")
        except ValueError as error:  # not a number, or not above 0: the default stays
            log(f"ignoring COMPASS_SWITCH_INTERVAL={os.environ['COMPASS_SWITCH_INTERVAL']!r}: {error}")
    if os.environ.get("COMPASS_HOST_TRACE"):
        _TRACE.open(os.environ["COMPASS_HOST_TRACE"])
    in_fd = int(os.environ.get("COMPASS_ENGINE_IN", "3"))
    out_fd = int(os.environ.get("COMPASS_ENGINE_OUT", "4"))
    global _HOST
    host = _HOST = EngineHost(backend, in_fd, out_fd)
    try:
        settings = EngineSettings.from_environment(backend.name, backend.arguments)
    except EngineConfigError as error:
        log(f"cannot start: {error}")
        host.send(fatal_message("startup_failed", str(error)), final=True)
        _exit(1)
    host.serve(settings)
