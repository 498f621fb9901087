"""Unit tests of the wire encoding (no broker needed)."""

from __future__ import annotations

import json
import struct

import pytest

from compass_client import BatchOutcome, per_request_results
from compass_client import protocol as p


def test_header_and_command_bytes_match_the_doc() -> None:
    assert p.HEADER == b"compass\x01"
    assert [int(c) for c in p.ProducerCommand] == [0x01, 0x02, 0x03, 0x04, 0x05, 0x06]
    assert [int(c) for c in p.BrokerReply] == [0x81, 0x82, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88]
    assert {c.value for c in p.RejectCode} == {
        "bad_frame", "bad_version", "unknown_command", "unknown_pool", "bad_payload", "too_large", "busy",
        "duplicate", "unknown_batch", "shutting_down", "session_required",
        "payload_mismatch"}
    assert len(p.FailureCode) == 9


def test_meta_is_the_docs_struct() -> None:
    meta = p.BatchMeta(7, max_attempts=2, priority=-3, deadline_ms=5000)
    assert meta.pack() == struct.pack(">IHhII", 7, 2, -3, 5000, 0)
    assert len(meta.pack()) == 16
    assert p.BatchMeta.unpack(meta.pack() + b"extra") == meta
    with pytest.raises(ValueError):
        p.BatchMeta(1, priority=40000)


def test_producer_messages() -> None:
    assert p.hello("s") == [b"compass\x01", b"\x01", b"s"]
    payload = json.dumps([{"custom_id": "a", "prompt": "x"}]).encode()
    frames = p.submit("s-1", "default", p.BatchMeta(1), payload)
    assert frames == [b"compass\x01", b"\x02", b"s-1", b"default", struct.pack(">IHhII", 1, 0, 0, 0, 0), payload]
    assert p.cancel("b") == [p.HEADER, b"\x03", b"b"]
    assert p.ack("b") == [p.HEADER, b"\x04", b"b"]
    assert p.status() == [p.HEADER, b"\x05"]
    assert p.heartbeat() == [p.HEADER, b"\x06"]
    with pytest.raises(ValueError):
        p.submit("x" * 257, "default", p.BatchMeta(1), b"[]")
    with pytest.raises(ValueError):
        p.hello("")


def test_replies_round_trip() -> None:
    replies: list[p.Reply] = [
        p.WelcomeReply("s", {"broker_id": "ab", "pending_results": 2}),
        p.AcceptedReply("b"),
        p.RejectedReply("b", "busy", "full", 250),
        p.RejectedReply("", "bad_frame", "no", 0),
        p.ProgressReply("b", 3, 8),
        p.ResultReply("b", 1, b'{"requests": 1}', b'[{"custom_id": "a", "text": "t"}]'),
        p.FailedReply("b", 3, "engine_dead", "boom", b""),
        p.StatusReply({"accepting": True}),
        p.HeartbeatReply("ab"),
    ]
    for reply in replies:
        assert p.decode_reply(reply.encode()) == reply


def test_bad_replies() -> None:
    with pytest.raises(p.ProtocolError) as raised:
        p.decode_reply([b"compass\x02", b"\x88", b"id"])
    assert raised.value.code == "bad_version"
    with pytest.raises(p.ProtocolError) as raised:
        p.decode_reply([b"nope", b"\x88", b"id"])
    assert raised.value.code == "bad_frame"
    with pytest.raises(p.ProtocolError) as raised:
        p.decode_reply([p.HEADER, b"\x99"])
    assert raised.value.code == "unknown_command"
    with pytest.raises(p.ProtocolError):
        p.decode_reply([p.HEADER, b"\x84", b"b", b"\x00\x01", b"\x00\x00\x00\x02"])  # 2-byte u32


def test_pool_names() -> None:
    assert p.is_valid_pool_name("llama-70b_v1.2")
    assert not p.is_valid_pool_name("")
    assert not p.is_valid_pool_name("a b")
    assert not p.is_valid_pool_name("x" * 65)


def test_per_request_results_never_lose_a_request() -> None:
    ok = BatchOutcome.completed("b", 1, b"{}", json.dumps([
        {"custom_id": "y", "text": "Y", "prompt_tokens": 1, "completion_tokens": 1, "finish_reason": "stop",
         "error": None},
        {"custom_id": "x", "text": None, "error": {"code": "bad_request", "message": "m"}},
    ]).encode())
    results = per_request_results(ok, ["x", "y", "z"])  # out of order, and z missing
    assert [r.custom_id for r in results] == ["x", "y", "z"]
    assert results[0].error is not None and results[0].error.code == "bad_request"
    assert results[1].text == "Y"
    assert results[2].error is not None and results[2].error.code == "missing_result"
    failed = BatchOutcome.failed("b", 3, "worker_lost", "gone", b"")
    assert [r.error.code for r in per_request_results(failed, ["x", "y"]) if r.error] == ["worker_lost"] * 2
    garbage = BatchOutcome.completed("b", 1, b"", b"not json")
    assert not garbage.ok and garbage.code == "bad_result"


def test_bad_endpoint_raises_in_the_constructor() -> None:
    import zmq

    from compass_client import Client

    with pytest.raises(zmq.ZMQError):
        Client("nonsense://here")


def test_payload_over_the_limit_is_refused_locally() -> None:
    from compass_client import Client, CompassError

    # Nothing listens there: the refusal must not need a broker.
    with Client("ipc:///tmp/compass-no-broker-here", max_payload_bytes=1000) as client:
        with pytest.raises(CompassError) as raised:
            client.submit_batch("b", [{"custom_id": "a", "prompt": "x" * 2000}], timeout=10)
        assert raised.value.code == "too_large"
        results = client.submit([{"prompt": "y" * 2000}], timeout=10)
        assert results[0].error is not None and results[0].error.code == "too_large"
