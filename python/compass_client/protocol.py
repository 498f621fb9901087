"""The compass wire protocol, version 1, producer side: constants and message encoding.

This mirrors docs/protocol.md one to one (and the Swift source of truth,
Sources/CompassProtocol/WireProtocol.swift). A message is a ZeroMQ multipart message: frame 0 is
the header ``b"compass" + version``, frame 1 one command byte, then one frame per field. Integers
are unsigned big-endian in frames of their exact width; strings are UTF-8.
"""

from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass
from enum import Enum, IntEnum
from typing import Any, Union

SIGNATURE = b"compass"
VERSION = 1
#: Frame 0 of every message: the signature and the version byte.
HEADER = SIGNATURE + bytes([VERSION])

DEFAULT_HEARTBEAT_MS = 1000
DEFAULT_LIVENESS = 3
MAX_BATCH_ID_BYTES = 256
MAX_POOL_NAME_BYTES = 64
MAX_SESSION_BYTES = 128
MAX_CODE_BYTES = 64
DEFAULT_MAX_PAYLOAD_BYTES = 64 << 20
DEFAULT_MAX_ATTEMPTS = 3


class ProducerCommand(IntEnum):
    """Producer -> broker (frontend) command bytes."""

    HELLO = 0x01  # session
    SUBMIT = 0x02  # batch id, pool, meta, payload
    CANCEL = 0x03  # batch id
    ACK = 0x04  # batch id
    STATUS = 0x05  # -
    HEARTBEAT = 0x06  # -


class BrokerReply(IntEnum):
    """Broker -> producer command bytes."""

    WELCOME = 0x81  # session, info (json)
    ACCEPTED = 0x82  # batch id
    REJECTED = 0x83  # batch id (may be empty), code, message, retry after ms (u32)
    PROGRESS = 0x84  # batch id, done (u32), total (u32)
    RESULT = 0x85  # batch id, attempts (u32), stats (json), payload
    FAILED = 0x86  # batch id, attempts (u32), code, message, partial payload
    STATUS = 0x87  # status (json)
    HEARTBEAT = 0x88  # broker id


class RejectCode(str, Enum):
    """The ``code`` of REJECTED."""

    BAD_FRAME = "bad_frame"
    BAD_VERSION = "bad_version"
    UNKNOWN_COMMAND = "unknown_command"
    UNKNOWN_POOL = "unknown_pool"
    BAD_PAYLOAD = "bad_payload"
    TOO_LARGE = "too_large"
    BUSY = "busy"
    DUPLICATE = "duplicate"
    UNKNOWN_BATCH = "unknown_batch"
    SHUTTING_DOWN = "shutting_down"
    SESSION_REQUIRED = "session_required"
    PAYLOAD_MISMATCH = "payload_mismatch"


class FailureCode(str, Enum):
    """The ``code`` of FAILED and of a per-request error."""

    ENGINE_DEAD = "engine_dead"
    OOM = "oom"
    TIMEOUT = "timeout"
    STARTUP_FAILED = "startup_failed"
    WORKER_LOST = "worker_lost"
    HANDED_BACK = "handed_back"
    ENGINE_ERROR = "engine_error"
    BAD_REQUEST = "bad_request"
    CANCELLED = "cancelled"


#: Refusals to wait out and re-SUBMIT (producer rule 6; the doc says to retry `shutting_down` too).
RETRYABLE_REJECTS = frozenset({RejectCode.BUSY.value, RejectCode.SHUTTING_DOWN.value})
#: Refusals that no other batch of the same run can escape: a run stops on them.
#: Refusals no batch of a run can get past: raised as CompassError instead of failing each request.
#: ``unauthorized`` is the client's own code for a refused CURVE handshake (no broker reply exists).
FATAL_FOR_RUN = frozenset({RejectCode.UNKNOWN_POOL.value, RejectCode.BAD_VERSION.value, "unauthorized"})

_POOL_NAME = re.compile(rb"[A-Za-z0-9._-]{1,64}")


def is_valid_pool_name(name: str) -> bool:
    """Whether ``name`` is 1-64 bytes of ``[A-Za-z0-9._-]``."""
    return _POOL_NAME.fullmatch(name.encode("utf-8")) is not None


_META = struct.Struct(">IHhII")
_META_AFFINITY = struct.Struct(">IHhIIQ")
#: Input bytes an affinity key is derived from (docs/protocol.md, Affinity).
AFFINITY_PREFIX_BYTES = 256


@dataclass(frozen=True)
class BatchMeta:
    """The meta frame of SUBMIT: 16 bytes, or 24 with an affinity key."""

    request_count: int
    max_attempts: int = 0  # 0: the broker's default
    priority: int = 0  # higher first
    deadline_ms: int = 0  # 0: none; counted from acceptance
    flags: int = 0
    affinity: int = 0  # 0: none; batches with the same key run on one worker where the pool allows

    def __post_init__(self) -> None:
        # Fail on the caller's thread with a clear message rather than in struct.pack later.
        for name, value, low, high in (
            ("request_count", self.request_count, 0, 2**32 - 1),
            ("max_attempts", self.max_attempts, 0, 2**16 - 1),
            ("priority", self.priority, -(2**15), 2**15 - 1),
            ("deadline_ms", self.deadline_ms, 0, 2**32 - 1),
            ("flags", self.flags, 0, 2**32 - 1),
            ("affinity", self.affinity, 0, 2**64 - 1),
        ):
            if not isinstance(value, int) or not low <= value <= high:
                raise ValueError(f"{name} must be an integer in [{low}, {high}], got {value!r}")

    def pack(self) -> bytes:
        if self.affinity:
            return _META_AFFINITY.pack(self.request_count, self.max_attempts, self.priority, self.deadline_ms,
                                       self.flags, self.affinity)
        return _META.pack(self.request_count, self.max_attempts, self.priority, self.deadline_ms, self.flags)

    @classmethod
    def unpack(cls, frame: bytes) -> BatchMeta:
        """Decodes a meta frame; longer frames are accepted (later versions may append fields)."""
        if len(frame) < _META.size:
            raise ProtocolError(RejectCode.BAD_FRAME.value,
                                f"meta must be at least {_META.size} bytes, got {len(frame)}")
        if len(frame) >= _META_AFFINITY.size:
            return cls(*_META_AFFINITY.unpack_from(frame))
        return cls(*_META.unpack_from(frame))


def affinity_key(request: dict[str, Any]) -> int:
    """The affinity key of a request (a payload dict), as every compass producer derives it.

    FNV-1a (64-bit) over a tag byte and the first 256 bytes of the input: ``p`` and the prompt's
    UTF-8; ``t`` and each of the first 64 ``prompt_token_ids`` as 4 bytes big-endian; ``m`` and each
    message's role, a 0 byte, its content, a 0 byte. Never 0 (0 means no key). Requests that start
    alike (a few-shot preamble, one scoring context) get the same key, so their batches run on one
    worker whose engine computes the shared prefix once.
    """
    ids = request.get("prompt_token_ids")
    messages = request.get("messages")
    if ids is not None:
        data = b"t" + b"".join((int(i) & 0xFFFFFFFF).to_bytes(4, "big") for i in ids[:AFFINITY_PREFIX_BYTES // 4])
    elif messages is not None:
        parts = []
        for m in messages:
            content = m.get("content", "")
            if isinstance(content, list):  # text parts are joined, as the engines do
                content = "".join(part.get("text", "") for part in content if isinstance(part, dict))
            parts.append(str(m.get("role", "")).encode("utf-8") + b"\0" + str(content).encode("utf-8") + b"\0")
        data = b"m" + b"".join(parts)[:AFFINITY_PREFIX_BYTES]
    else:
        data = b"p" + str(request.get("prompt") or "").encode("utf-8")[:AFFINITY_PREFIX_BYTES]
    h = 0xCBF29CE484222325
    for byte in data:
        h = ((h ^ byte) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h or 1


class ProtocolError(ValueError):
    """A message that does not follow the protocol; ``code`` is a RejectCode value."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


# ---------------------------------------------------------------------------------------------
# Producer -> broker


def _text(value: str, what: str, max_bytes: int, allow_empty: bool = False) -> bytes:
    raw = value.encode("utf-8")
    if (not raw and not allow_empty) or len(raw) > max_bytes:
        raise ValueError(f"{what} must be 1-{max_bytes} bytes of UTF-8, got {len(raw)} bytes")
    return raw


def _command(command: int) -> bytes:
    return bytes([command])


def check_submit_fields(batch_id: str, pool: str) -> None:
    """Raises ValueError for a batch id or pool name that cannot be framed (before queuing it)."""
    _text(batch_id, "batch id", MAX_BATCH_ID_BYTES)
    _text(pool, "pool", MAX_POOL_NAME_BYTES)


def hello(session: str) -> list[bytes]:
    """HELLO(session)."""
    return [HEADER, _command(ProducerCommand.HELLO), _text(session, "session", MAX_SESSION_BYTES)]


def submit(batch_id: str, pool: str, meta: BatchMeta, payload: bytes) -> list[bytes]:
    """SUBMIT(batch id, pool, meta, payload)."""
    return [
        HEADER,
        _command(ProducerCommand.SUBMIT),
        _text(batch_id, "batch id", MAX_BATCH_ID_BYTES),
        _text(pool, "pool", MAX_POOL_NAME_BYTES),
        meta.pack(),
        payload,
    ]


def cancel(batch_id: str) -> list[bytes]:
    """CANCEL(batch id)."""
    return [HEADER, _command(ProducerCommand.CANCEL), _text(batch_id, "batch id", MAX_BATCH_ID_BYTES)]


def ack(batch_id: str) -> list[bytes]:
    """ACK(batch id)."""
    return [HEADER, _command(ProducerCommand.ACK), _text(batch_id, "batch id", MAX_BATCH_ID_BYTES)]


def status() -> list[bytes]:
    """STATUS()."""
    return [HEADER, _command(ProducerCommand.STATUS)]


def heartbeat() -> list[bytes]:
    """HEARTBEAT()."""
    return [HEADER, _command(ProducerCommand.HEARTBEAT)]


# ---------------------------------------------------------------------------------------------
# Broker -> producer


def _u32(value: int) -> bytes:
    return struct.pack(">I", value)


@dataclass(frozen=True)
class WelcomeReply:
    session: str
    info: dict[str, Any]  # broker_id, broker_version, heartbeat_ms, liveness, pending_results

    def encode(self) -> list[bytes]:
        return [HEADER, _command(BrokerReply.WELCOME), self.session.encode(), json.dumps(self.info).encode()]


@dataclass(frozen=True)
class AcceptedReply:
    batch_id: str

    def encode(self) -> list[bytes]:
        return [HEADER, _command(BrokerReply.ACCEPTED), self.batch_id.encode()]


@dataclass(frozen=True)
class RejectedReply:
    batch_id: str  # empty when the broker could not read one
    code: str
    message: str
    retry_after_ms: int

    def encode(self) -> list[bytes]:
        return [HEADER, _command(BrokerReply.REJECTED), self.batch_id.encode(), self.code.encode(),
                self.message.encode(), _u32(self.retry_after_ms)]


@dataclass(frozen=True)
class ProgressReply:
    batch_id: str
    done: int
    total: int

    def encode(self) -> list[bytes]:
        return [HEADER, _command(BrokerReply.PROGRESS), self.batch_id.encode(), _u32(self.done), _u32(self.total)]


@dataclass(frozen=True)
class ResultReply:
    batch_id: str
    attempts: int
    stats: bytes  # json
    payload: bytes  # json array of per-request results

    def encode(self) -> list[bytes]:
        return [HEADER, _command(BrokerReply.RESULT), self.batch_id.encode(), _u32(self.attempts), self.stats,
                self.payload]


@dataclass(frozen=True)
class FailedReply:
    batch_id: str
    attempts: int
    code: str
    message: str
    partial: bytes  # json array of the results that exist, or empty

    def encode(self) -> list[bytes]:
        return [HEADER, _command(BrokerReply.FAILED), self.batch_id.encode(), _u32(self.attempts),
                self.code.encode(), self.message.encode(), self.partial]


@dataclass(frozen=True)
class StatusReply:
    document: dict[str, Any]

    def encode(self) -> list[bytes]:
        return [HEADER, _command(BrokerReply.STATUS), json.dumps(self.document).encode()]


@dataclass(frozen=True)
class HeartbeatReply:
    broker_id: str

    def encode(self) -> list[bytes]:
        return [HEADER, _command(BrokerReply.HEARTBEAT), self.broker_id.encode()]


Reply = Union[WelcomeReply, AcceptedReply, RejectedReply, ProgressReply, ResultReply, FailedReply,
              StatusReply, HeartbeatReply]

# Fields after the command byte, per reply.
_FIELD_COUNTS = {
    BrokerReply.WELCOME: 2, BrokerReply.ACCEPTED: 1, BrokerReply.REJECTED: 4, BrokerReply.PROGRESS: 3,
    BrokerReply.RESULT: 4, BrokerReply.FAILED: 5, BrokerReply.STATUS: 1, BrokerReply.HEARTBEAT: 1,
}


def check_header(frame: bytes) -> None:
    """Raises ProtocolError ``bad_frame`` for a foreign header, ``bad_version`` for another version."""
    if len(frame) != len(HEADER) or not frame.startswith(SIGNATURE):
        raise ProtocolError(RejectCode.BAD_FRAME.value, 'frame 0 must be the 8-byte header "compass" + version byte')
    if frame[-1] != VERSION:
        raise ProtocolError(RejectCode.BAD_VERSION.value,
                            f"the broker speaks protocol version {frame[-1]}; this client speaks version {VERSION}")


def _read_text(frame: bytes, what: str) -> str:
    try:
        return frame.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ProtocolError(RejectCode.BAD_FRAME.value, f"{what} is not UTF-8: {error}") from None


def _read_u32(frame: bytes, what: str) -> int:
    if len(frame) != 4:
        raise ProtocolError(RejectCode.BAD_FRAME.value, f"{what} must be a 4-byte u32, got {len(frame)} bytes")
    return int.from_bytes(frame, "big")


def _read_json(frame: bytes, what: str) -> Any:
    try:
        return json.loads(frame) if frame else {}
    except ValueError as error:
        raise ProtocolError(RejectCode.BAD_FRAME.value, f"{what} is not JSON: {error}") from None


def decode_reply(frames: list[bytes]) -> Reply:
    """Decodes a broker -> producer message (as a DEALER receives it: no routing frame)."""
    if len(frames) < 2:
        raise ProtocolError(RejectCode.BAD_FRAME.value, f"a message has at least 2 frames, got {len(frames)}")
    check_header(frames[0])
    if len(frames[1]) != 1:
        raise ProtocolError(RejectCode.BAD_FRAME.value, "frame 1 must be one command byte")
    try:
        command = BrokerReply(frames[1][0])
    except ValueError:
        raise ProtocolError(RejectCode.UNKNOWN_COMMAND.value, f"unknown broker reply 0x{frames[1][0]:02x}") from None
    f = frames[2:]
    if len(f) != _FIELD_COUNTS[command]:
        raise ProtocolError(RejectCode.BAD_FRAME.value,
                            f"{command.name} has {_FIELD_COUNTS[command]} frames after the command, got {len(f)}")
    if command is BrokerReply.WELCOME:
        return WelcomeReply(_read_text(f[0], "session"), _read_json(f[1], "info"))
    if command is BrokerReply.ACCEPTED:
        return AcceptedReply(_read_text(f[0], "batch id"))
    if command is BrokerReply.REJECTED:
        return RejectedReply(_read_text(f[0], "batch id"), _read_text(f[1], "code"), _read_text(f[2], "message"),
                             _read_u32(f[3], "retry after"))
    if command is BrokerReply.PROGRESS:
        return ProgressReply(_read_text(f[0], "batch id"), _read_u32(f[1], "done"), _read_u32(f[2], "total"))
    if command is BrokerReply.RESULT:
        return ResultReply(_read_text(f[0], "batch id"), _read_u32(f[1], "attempts"), f[2], f[3])
    if command is BrokerReply.FAILED:
        return FailedReply(_read_text(f[0], "batch id"), _read_u32(f[1], "attempts"), _read_text(f[2], "code"),
                           _read_text(f[3], "message"), f[4])
    if command is BrokerReply.STATUS:
        return StatusReply(_read_json(f[0], "status"))
    return HeartbeatReply(_read_text(f[0], "broker id"))
