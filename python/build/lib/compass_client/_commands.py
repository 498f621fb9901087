"""What callers hand the client thread, and how it reports back to them."""

from __future__ import annotations

from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Protocol, Union

from . import protocol as p
from .types import BatchOutcome, CompassError


class Listener(Protocol):
    """Receives one batch's events, on the client thread: implementations must only hand off."""

    def on_accepted(self, batch_id: str) -> None: ...
    def on_progress(self, batch_id: str, done: int, total: int) -> None: ...
    def on_outcome(self, outcome: BatchOutcome) -> None: ...
    def on_error(self, batch_id: str, error: CompassError) -> None: ...


@dataclass
class Submission:
    batch_id: str
    pool: str
    meta: p.BatchMeta
    payload: bytes
    listener: Listener


# Commands from callers to the thread.
@dataclass
class Submit:
    submission: Submission


@dataclass
class Cancel:
    batch_id: str


@dataclass
class Abandon:
    """The caller gave up on these batches (timeout, Ctrl-C, a closed iterator): cancel them."""

    batch_ids: list[str]


@dataclass
class Ack:
    """The caller took these held outcomes (collect): the broker may forget them."""

    batch_ids: list[str]


@dataclass
class Status:
    future: Future[dict[str, Any]]


@dataclass
class Close:
    pass


Command = Union[Submit, Cancel, Abandon, Ack, Status, Close]


def refuse(command: Command, error: CompassError) -> None:
    if isinstance(command, Submit):
        s = command.submission
        s.listener.on_error(s.batch_id, CompassError(error.code, error.message, s.batch_id))
    elif isinstance(command, Status):
        if not command.future.done():
            command.future.set_exception(error)
