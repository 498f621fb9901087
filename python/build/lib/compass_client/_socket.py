"""The producer's DEALER socket and the settings of the client thread."""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from typing import Any, Optional

import zmq

from .curve import CurveKeys

#: libzmq's own reconnect delay; a dropped connection is replaced by a new socket sooner than this.
ZMQ_RECONNECT_IVL_MS = 100


@dataclass(frozen=True)
class LoopOptions:
    broker: str
    session: str
    heartbeat_ms: int
    liveness: int
    max_busy_backoff_ms: int
    max_payload_bytes: int
    curve: Optional[CurveKeys]


def make_socket(context: zmq.Context[Any], options: LoopOptions, incarnation: int) -> zmq.Socket[Any]:
    """A connected DEALER with a routing id unique to this connection (the broker hands over by id)."""
    s: zmq.Socket[Any] = context.socket(zmq.DEALER)
    try:
        s.setsockopt(zmq.ROUTING_ID, f"py-{os.getpid()}-{secrets.token_hex(4)}-{incarnation}".encode())
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.RECONNECT_IVL, ZMQ_RECONNECT_IVL_MS)
        s.setsockopt(zmq.RECONNECT_IVL_MAX, 2000)
        s.setsockopt(zmq.SNDHWM, 100_000)
        s.setsockopt(zmq.RCVHWM, 100_000)
        if options.curve is not None:
            options.curve.apply(s)
        s.connect(options.broker)
    except BaseException:
        s.close(linger=0)  # an open socket would block Context.term() forever
        raise
    return s
