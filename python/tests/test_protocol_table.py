"""The Python client's protocol against spec/protocol.json, the one machine-readable statement of
the wire protocol (the Swift codecs, the engine adapters and the bench are tested against it too)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from compass_client import protocol as p

TABLE = json.loads((Path(__file__).resolve().parents[2] / "spec" / "protocol.json").read_text())
SAMPLES: dict[str, Any] = {"string": b"x", "u8": b"\x01", "u32": b"\x00\x00\x00\x07", "json": b"{}",
                           "meta": bytes(16), "payload": b"[]"}


def messages(direction: str) -> list[dict[str, Any]]:
    return TABLE["messages"][direction]


def test_command_bytes() -> None:
    assert {c.name: int(c) for c in p.ProducerCommand} == {m["name"]: m["byte"] for m in messages("producer_to_broker")}
    assert {c.name: int(c) for c in p.BrokerReply} == {m["name"]: m["byte"] for m in messages("broker_to_producer")}


def test_codes_and_limits() -> None:
    assert [c.value for c in p.RejectCode] == TABLE["reject_codes"]
    assert sorted(c.value for c in p.FailureCode) == sorted(f["code"] for f in TABLE["failure_codes"])
    limits = TABLE["limits"]
    assert p.HEADER == TABLE["signature"].encode() + bytes([TABLE["version"]])
    assert (p.MAX_BATCH_ID_BYTES, p.MAX_POOL_NAME_BYTES, p.MAX_SESSION_BYTES, p.MAX_CODE_BYTES) == (
        limits["batch_id_bytes"], limits["pool_name_bytes"], limits["session_bytes"], limits["code_bytes"])
    assert (p.DEFAULT_MAX_PAYLOAD_BYTES, p.DEFAULT_MAX_ATTEMPTS) == (limits["default_max_payload_bytes"], limits["default_max_attempts"])
    assert (p.DEFAULT_HEARTBEAT_MS, p.DEFAULT_LIVENESS) == (limits["default_heartbeat_ms"], limits["default_liveness"])
    assert len(p.BatchMeta(1).pack()) == limits["meta_bytes"]
    # The per-message bounds the broker enforces (docs/protocol.md, Transport): the longest message
    # the client sends fits them, and the limits hold together.
    assert limits["frames_per_message"] >= 9
    assert limits["control_message_bytes"] < limits["message_headroom_bytes"] <= limits["default_max_payload_bytes"]
    assert limits["json_depth"] >= 1 and limits["status_sessions"] >= 1
    # A session's default share of a pool (docs/protocol.md, Producer rules): a part of the pool
    # that still holds several of the largest payloads; and a window of remembered ACKs.
    share = limits["default_max_pool_bytes"] // limits["default_session_share_divisor"]
    assert limits["default_max_payload_bytes"] <= share < limits["default_max_pool_bytes"]
    assert limits["default_remembered_acks"] >= 1


def test_producer_messages_have_the_tables_fields() -> None:
    meta = p.BatchMeta(1)
    built = {"HELLO": p.hello("s"), "SUBMIT": p.submit("b", "pool", meta, b"[]"), "CANCEL": p.cancel("b"),
             "ACK": p.ack("b"), "STATUS": p.status(), "HEARTBEAT": p.heartbeat()}
    for m in messages("producer_to_broker"):
        frames = built[m["name"]]
        assert frames[1] == bytes([m["byte"]]) and len(frames) == 2 + len(m["fields"]), m["name"]


@pytest.mark.parametrize("message", messages("broker_to_producer"), ids=lambda m: m["name"])
def test_replies_decode_with_the_tables_fields(message: dict[str, Any]) -> None:
    frames = [p.HEADER, bytes([message["byte"]])] + [SAMPLES[kind] for _, kind in message["fields"]]
    reply = p.decode_reply(frames)
    assert reply.encode()[1] == bytes([message["byte"]])
    assert len(reply.encode()) == len(frames)
    with pytest.raises(p.ProtocolError):
        p.decode_reply(frames[:-1])


def test_affinity_keys_and_the_meta_that_carries_them() -> None:
    affinity = TABLE["affinity"]
    assert affinity["meta_offset"] == TABLE["limits"]["meta_bytes"]
    assert len(p.BatchMeta(1, affinity=5).pack()) == affinity["meta_bytes"]
    assert affinity["prefix_bytes"] == p.AFFINITY_PREFIX_BYTES
    meta = p.BatchMeta(3, 0, -1, 0, 0, affinity=0x0102030405060708)
    assert meta.pack().hex() == affinity["meta_example"]
    assert p.BatchMeta.unpack(meta.pack()) == meta
    assert len(p.BatchMeta(3).pack()) == 16 and p.BatchMeta.unpack(p.BatchMeta(3).pack()).affinity == 0
    assert len(affinity["examples"]) >= 5
    for example in affinity["examples"]:
        assert format(p.affinity_key(example["request"]), "016x") == example["key"], example["request"]["custom_id"]
    # Only the first prefix_bytes bytes count: requests that share a long preamble share a key.
    preamble = "Q: a question?\nA: an answer.\n\n" * 20
    assert p.affinity_key({"prompt": preamble + "Q: one"}) == p.affinity_key({"prompt": preamble + "Q: two"})
    assert p.affinity_key({"prompt": "Q: one"}) != p.affinity_key({"prompt": "Q: two"})
    with pytest.raises(ValueError):
        p.BatchMeta(1, affinity=2**64)


def test_the_client_keys_batches_by_prefix_unless_told_otherwise() -> None:
    from compass_client.client import batch_affinity

    items = [{"custom_id": "0", "prompt": "shared preamble"}, {"custom_id": "1", "prompt": "other"}]
    assert batch_affinity("prefix", items) == p.affinity_key(items[0])
    assert batch_affinity(None, items) == 0
    assert batch_affinity(7, items) == 7
    with pytest.raises(ValueError):
        batch_affinity("suffix", items)
