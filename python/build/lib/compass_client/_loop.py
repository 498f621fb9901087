"""The client's background thread: owns the DEALER socket and every outstanding batch.

ZeroMQ sockets are not thread-safe, so exactly one thread touches the socket. Callers hand it
commands through a locked deque and wake its poll through a socketpair. It implements the
producer rules of docs/protocol.md, as the Swift client (Sources/CompassClient/ClientLoop.swift)
does: HELLO, heartbeats, reconnect on silence, HELLO + re-SUBMIT on a new broker id, busy
back-off, ACK of every outcome, and de-duplication by batch id so each batch resolves once.
"""

from __future__ import annotations

import logging
import math
import random
import socket as pysocket
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Optional

import zmq
from zmq.utils.monitor import recv_monitor_message

from . import protocol as p
from ._commands import Abandon, Ack, Cancel, Close, Command, Status, Submission, Submit, refuse
from ._held import HeldResults
from ._socket import ZMQ_RECONNECT_IVL_MS, LoopOptions, make_socket
from .types import BatchOutcome, CompassError

log = logging.getLogger("compass_client")

#: Batch ids remembered after they resolved, to ACK and drop re-deliveries (bounds memory).
RESOLVED_MEMORY = 1_000_000
#: Messages read per turn, so that commands and timers are served during a flood of results.
RECEIVE_BURST = 1000
#: How long close() lets queued ACKs reach the broker.
CLOSE_LINGER_MS = 500
#: Least time between two sockets made because a connection dropped (a CURVE handshake that keeps
#: failing must not spin); below ZMQ_RECONNECT_IVL_MS so the old socket never reconnects first.
MIN_REPLACE_INTERVAL_S = 0.05
assert MIN_REPLACE_INTERVAL_S * 1000 < ZMQ_RECONNECT_IVL_MS


@dataclass
class _Outstanding:
    submission: Submission
    accepted: bool = False
    #: When to send SUBMIT again after `busy` (None: not waiting, the broker has it or will).
    retry_at: Optional[float] = None
    busy_count: int = 0
    cancel_requested: bool = False


class ClientLoop:
    """Starts the thread at construction; ``post`` hands it commands from any thread."""

    def __init__(self, options: LoopOptions, context: zmq.Context[Any]) -> None:
        self.options = options
        self.context = context
        self.held = HeldResults()
        self.counters: dict[str, int] = {
            "submits": 0, "busy": 0, "reconnects": 0, "broker_restarts": 0, "resubmits": 0, "duplicates": 0,
        }
        self._lock = threading.Lock()
        self._commands: deque[Command] = deque()
        self._closed_reason: Optional[CompassError] = None
        self._wake_r, self._wake_w = pysocket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        # Fields below are the thread's own.
        self._socket: Optional[zmq.Socket[Any]] = None
        self._monitor: Optional[zmq.Socket[Any]] = None
        #: When to replace a socket whose connection dropped (None: not due).
        self._replace_at: Optional[float] = None
        self._last_replaced = 0.0
        self._incarnation = 0
        self._outstanding: dict[str, _Outstanding] = {}
        self._resolved: set[str] = set()
        self._resolved_order: deque[str] = deque()
        self._status_waiters: deque[Future[dict[str, Any]]] = deque()
        self._broker_id: Optional[str] = None
        #: True between a reconnect (which re-submitted everything) and the first broker id heard.
        self._fresh_connection = False
        self._running = True
        self._close_linger_ms = 0
        now = time.monotonic()
        self._last_heard = now
        self._last_heartbeat = now
        try:
            # Made here so that a bad endpoint raises in the constructor; the thread start that
            # follows is the full memory barrier ZeroMQ asks for when a socket changes threads.
            self._open_socket()
        except BaseException:
            self._close_socket(0)
            self._wake_r.close()
            self._wake_w.close()
            raise
        self.thread = threading.Thread(target=self._run, name="compass-client", daemon=True)
        self.thread.start()

    # ------------------------------------------------------------------ any thread

    def post(self, command: Command) -> None:
        """Queues a command for the thread; once the thread has ended it is refused at once."""
        with self._lock:
            reason = self._closed_reason
            if reason is None:
                self._commands.append(command)
        if reason is not None:
            refuse(command, reason)
            return
        try:
            self._wake_w.send(b"\0")
        except (BlockingIOError, OSError):
            pass  # a wake-up is already pending (or we are shutting down)

    # ------------------------------------------------------------------ the thread

    def _run(self) -> None:
        error = CompassError("closed", "the client was closed")
        try:
            self._hello()
            self._serve()
        except Exception as exc:  # a bug must not leave callers waiting forever
            log.exception("compass client thread failed")
            error = CompassError("closed", f"the client's thread failed: {exc!r}")
        finally:
            self._shutdown(error)

    def _serve(self) -> None:
        while self._running:
            current, monitor = self._socket, self._monitor
            assert current is not None and monitor is not None
            poller = zmq.Poller()
            poller.register(current, zmq.POLLIN)
            poller.register(monitor, zmq.POLLIN)
            poller.register(self._wake_r, zmq.POLLIN)
            while self._running and self._socket is current:
                events = dict(poller.poll(self._poll_timeout_ms()))
                if self._wake_r in events:
                    self._drain_wakeups()
                self._take_commands()
                if current in events:
                    self._receive(current)
                if monitor in events:
                    self._monitor_events(monitor)
                self._timers()

    def _poll_timeout_ms(self) -> int:
        hb = self.options.heartbeat_ms / 1000
        due = min(self._last_heartbeat + hb, self._last_heard + hb * self.options.liveness)
        if self._replace_at is not None:
            due = min(due, self._replace_at)
        for o in self._outstanding.values():
            if o.retry_at is not None and o.retry_at < due:
                due = o.retry_at
        return max(0, min(self.options.heartbeat_ms, math.ceil((due - time.monotonic()) * 1000)))

    def _open_socket(self) -> None:
        self._socket = make_socket(self.context, self.options, self._incarnation)
        self._monitor = self._socket.get_monitor_socket(
            zmq.EVENT_DISCONNECTED | zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
            | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)

    def _close_socket(self, linger_ms: int) -> None:
        if self._monitor is not None:
            assert self._socket is not None
            self._socket.disable_monitor()
            self._monitor.close(linger=0)
            self._monitor = None
        if self._socket is not None:
            self._socket.close(linger=linger_ms)

    def _monitor_events(self, monitor: zmq.Socket[Any]) -> None:
        """The connection dropped: whatever broker answers next may be a new one.

        libzmq would reconnect this socket by itself and first flush what is queued in it, so a
        SUBMIT could reach a restarted broker before our HELLO; that broker files it under an
        anonymous session and the batch is lost to us. A new socket starts with HELLO instead.
        """
        while True:
            try:
                event = recv_monitor_message(monitor, zmq.NOBLOCK)
            except zmq.Again:
                return
            if event["event"] == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
                # A refused key looks like a broker that never answers: fail what waits, with why.
                self._fail_all(CompassError("unauthorized", "the broker refused this client's CURVE key: "
                                            "is its public key in the broker's producer allowlist?"))
            elif event["event"] in (zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL, zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL):
                self._fail_all(CompassError("unauthorized", "the handshake with the broker failed: it may require CURVE "
                                            "(curve_server_key), or curve_server_key is not the broker's public key"))
            elif event["event"] == zmq.EVENT_DISCONNECTED and self._replace_at is None:
                self._replace_at = max(time.monotonic(), self._last_replaced + MIN_REPLACE_INTERVAL_S)

    def _drain_wakeups(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except (BlockingIOError, OSError):
            pass

    def _take_commands(self) -> None:
        with self._lock:
            commands = list(self._commands)
            self._commands.clear()
        for command in commands:
            self._handle_command(command)

    def _send(self, frames: list[bytes]) -> bool:
        # Never block the thread: a DEALER with no connection or a full queue refuses; what is lost
        # is re-sent after the reconnect that silence leads to.
        assert self._socket is not None
        try:
            self._socket.send_multipart(frames, zmq.NOBLOCK)
            return True
        except zmq.Again:
            return False

    def _hello(self) -> None:
        self._last_heard = time.monotonic()  # the broker gets a full liveness period to answer
        self._send(p.hello(self.options.session))

    def _send_submit(self, s: Submission) -> None:
        self._send(p.submit(s.batch_id, s.pool, s.meta, s.payload))

    def _mark_resolved(self, batch_id: str) -> None:
        if batch_id in self._resolved:
            return
        self._resolved.add(batch_id)
        self._resolved_order.append(batch_id)
        if len(self._resolved_order) > RESOLVED_MEMORY:
            self._resolved.discard(self._resolved_order.popleft())

    def _resolve(self, batch_id: str, outcome: BatchOutcome) -> None:
        o = self._outstanding.pop(batch_id)
        self._mark_resolved(batch_id)
        o.submission.listener.on_outcome(outcome)

    # ------------------------------------------------------------------ commands

    def _handle_command(self, command: Command) -> None:
        if isinstance(command, Submit):
            self._submit(command.submission)
        elif isinstance(command, Cancel):
            self._cancel(command.batch_id)
        elif isinstance(command, Abandon):
            for batch_id in command.batch_ids:
                o = self._outstanding.pop(batch_id, None)
                if o is None:
                    continue
                self._mark_resolved(batch_id)  # its FAILED cancelled is then ACKed and dropped
                if o.retry_at is None:
                    self._send(p.cancel(batch_id))
        elif isinstance(command, Ack):
            for batch_id in command.batch_ids:
                self._mark_resolved(batch_id)
                self._send(p.ack(batch_id))
        elif isinstance(command, Status):
            self._status_waiters.append(command.future)
            self._send(p.status())
        elif isinstance(command, Close):
            self._running = False
            self._close_linger_ms = CLOSE_LINGER_MS

    def _submit(self, s: Submission) -> None:
        if s.batch_id in self._outstanding:
            s.listener.on_error(s.batch_id, CompassError(
                p.RejectCode.DUPLICATE.value, f"batch {s.batch_id} is already outstanding in this client", s.batch_id))
            return
        if len(s.payload) > self.options.max_payload_bytes:
            # The broker's libzmq would drop the connection (ZMQ_MAXMSGSIZE) without a word, and the
            # re-SUBMIT after the reconnect would be dropped again: refuse it here instead.
            s.listener.on_error(s.batch_id, CompassError(
                p.RejectCode.TOO_LARGE.value, f"payload of {len(s.payload)} bytes exceeds max_payload_bytes="
                f"{self.options.max_payload_bytes}; use smaller batches", s.batch_id))
            return
        self.counters["submits"] += 1
        self._outstanding[s.batch_id] = _Outstanding(s)
        held = self.held.take(s.batch_id)
        if held is not None:
            # A previous client of this session submitted the same id and its outcome is here.
            self._send(p.ack(s.batch_id))
            self._resolve(s.batch_id, held)
            return
        self._send_submit(s)

    def _cancel(self, batch_id: str) -> None:
        o = self._outstanding.get(batch_id)
        if o is None:
            # Maybe a batch of an earlier client of this session: the broker knows.
            self._send(p.cancel(batch_id))
            return
        o.cancel_requested = True
        if o.retry_at is not None:
            # Refused busy and waiting to be re-sent: the broker does not have it, end it here.
            self._resolve(batch_id, _cancelled_locally(batch_id))
            return
        self._send(p.cancel(batch_id))

    # ------------------------------------------------------------------ replies

    def _receive(self, sock: zmq.Socket[Any]) -> None:
        for _ in range(RECEIVE_BURST):
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            self._last_heard = time.monotonic()
            try:
                reply = p.decode_reply(frames)
            except p.ProtocolError as error:
                if error.code == p.RejectCode.BAD_VERSION.value:
                    self._fail_all(CompassError(error.code, str(error)))
                else:
                    log.warning("ignoring a malformed message from the broker: %s", error)
                continue
            self._handle_reply(reply)

    def _handle_reply(self, reply: p.Reply) -> None:
        if isinstance(reply, p.AcceptedReply):
            o = self._outstanding.get(reply.batch_id)
            if o is not None:
                o.accepted = True
                o.submission.listener.on_accepted(reply.batch_id)
        elif isinstance(reply, p.RejectedReply):
            self._rejected(reply)
        elif isinstance(reply, p.ProgressReply):
            o = self._outstanding.get(reply.batch_id)
            if o is not None:
                o.submission.listener.on_progress(reply.batch_id, reply.done, reply.total)
        elif isinstance(reply, p.ResultReply):
            self._delivered(BatchOutcome.completed(reply.batch_id, reply.attempts, reply.stats, reply.payload))
        elif isinstance(reply, p.FailedReply):
            self._delivered(BatchOutcome.failed(reply.batch_id, reply.attempts, reply.code, reply.message,
                                                reply.partial))
        elif isinstance(reply, p.StatusReply):
            if self._status_waiters:
                waiter = self._status_waiters.popleft()
                if not waiter.done():
                    waiter.set_result(reply.document)
        elif isinstance(reply, p.WelcomeReply):
            self.held.note_welcome(reply.info)
            broker_id = reply.info.get("broker_id")
            if isinstance(broker_id, str):
                self._note_broker(broker_id)
        elif isinstance(reply, p.HeartbeatReply):
            self._note_broker(reply.broker_id)

    def _delivered(self, outcome: BatchOutcome) -> None:
        """RESULT or FAILED: resolve the batch once, ACK every delivery we keep or already kept."""
        batch_id = outcome.batch_id
        self.held.note_delivery()
        if batch_id in self._outstanding:
            self._send(p.ack(batch_id))
            self._resolve(batch_id, outcome)
        elif batch_id in self._resolved:
            self.counters["duplicates"] += 1
            self._send(p.ack(batch_id))  # a re-delivery after a reconnect: the broker missed our ACK
        else:
            self.held.put(outcome)  # ACKed when a caller takes it

    def _rejected(self, reply: p.RejectedReply) -> None:
        if not reply.batch_id:
            if reply.code == p.RejectCode.BAD_VERSION.value:
                self._fail_all(CompassError(reply.code, reply.message))
            else:
                log.warning("the broker rejected a message: %s: %s", reply.code, reply.message)
            return
        o = self._outstanding.get(reply.batch_id)
        if o is None:
            return  # e.g. unknown_batch for a CANCEL of a batch we do not track
        if reply.code in p.RETRYABLE_REJECTS:
            # Back off: the broker's hint, doubled per refusal, capped, with jitter so that many
            # producers refused at once do not come back at once.
            o.busy_count += 1
            self.counters["busy"] += 1
            base = max(reply.retry_after_ms, 20) << min(o.busy_count - 1, 6)
            wait_ms = min(base, self.options.max_busy_backoff_ms) + random.uniform(0, 20)
            o.retry_at = time.monotonic() + wait_ms / 1000
            o.accepted = False
        elif reply.code == p.RejectCode.UNKNOWN_BATCH.value:
            # The answer to a CANCEL, never to a SUBMIT: the broker no longer has the batch.
            if o.cancel_requested:
                self._resolve(reply.batch_id, _cancelled_locally(reply.batch_id))
        else:
            self._outstanding.pop(reply.batch_id)
            self._mark_resolved(reply.batch_id)
            o.submission.listener.on_error(reply.batch_id, CompassError(reply.code, reply.message, reply.batch_id))

    def _note_broker(self, broker_id: str) -> None:
        """A broker id we did not know: it restarted and, without a journal, lost what it had."""
        known, fresh = self._broker_id, self._fresh_connection
        self._broker_id = broker_id
        self._fresh_connection = False
        if known is None or known == broker_id:
            return
        self.counters["broker_restarts"] += 1
        log.info("broker restarted (id %s -> %s): HELLO and re-SUBMIT %d batches", known, broker_id,
                 len(self._outstanding))
        if not fresh:  # a reconnect has just said HELLO and re-submitted: no need twice
            self._hello()
            self._resubmit_outstanding()

    def _resubmit_outstanding(self) -> None:
        for o in self._outstanding.values():
            if o.retry_at is None:
                o.accepted = False
                self.counters["resubmits"] += 1
                self._send_submit(o.submission)

    def _fail_all(self, error: CompassError) -> None:
        outstanding, self._outstanding = self._outstanding, {}
        for batch_id, o in outstanding.items():
            self._mark_resolved(batch_id)
            o.submission.listener.on_error(batch_id, CompassError(error.code, error.message, batch_id))

    # ------------------------------------------------------------------ timers

    def _timers(self) -> None:
        now = time.monotonic()
        for o in self._outstanding.values():
            if o.retry_at is not None and now >= o.retry_at:
                o.retry_at = None
                self._send_submit(o.submission)
        if self._replace_at is not None and now >= self._replace_at:
            self._reconnect("the connection dropped")
            return
        hb = self.options.heartbeat_ms / 1000
        if now - self._last_heartbeat >= hb:
            # Sent on schedule even while other traffic flows: its answer is what proves the broker alive.
            self._last_heartbeat = now
            self._send(p.heartbeat())
        if now - self._last_heard > hb * self.options.liveness:
            self._reconnect(f"the broker was silent for {self.options.heartbeat_ms * self.options.liveness} ms")

    def _reconnect(self, why: str) -> None:
        """New socket, HELLO, and every awaited batch again (SUBMIT is idempotent)."""
        self.counters["reconnects"] += 1
        log.info("%s: reconnecting to %s", why, self.options.broker)
        self._close_socket(0)  # drops what was queued for the old connection: re-sent below
        self._incarnation += 1
        self._replace_at = None
        self._last_replaced = time.monotonic()
        self._open_socket()
        self._fresh_connection = True
        self._hello()
        self._resubmit_outstanding()
        # STATUS requests sent on the old socket are lost; ask again for each waiter.
        for _ in self._status_waiters:
            self._send(p.status())

    # ------------------------------------------------------------------ end

    def _shutdown(self, error: CompassError) -> None:
        with self._lock:
            self._closed_reason = error
            pending = list(self._commands)
            self._commands.clear()
        for command in pending:
            if isinstance(command, Ack) and self._socket is not None:
                self._handle_command(command)  # still worth sending before the socket closes
            else:
                refuse(command, error)
        for batch_id, o in self._outstanding.items():
            o.submission.listener.on_error(batch_id, CompassError(error.code, error.message, batch_id))
        self._outstanding.clear()
        for waiter in self._status_waiters:
            if not waiter.done():
                waiter.set_exception(CompassError(error.code, error.message))
        self._status_waiters.clear()
        self._close_socket(self._close_linger_ms)
        self._wake_r.close()
        self._wake_w.close()
        self.held.close()


def _cancelled_locally(batch_id: str) -> BatchOutcome:
    return BatchOutcome(batch_id, 0, [], {}, p.FailureCode.CANCELLED.value,
                        "cancelled by the producer before the broker accepted it")
