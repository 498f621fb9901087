"""CURVE: the options reach the socket, and a CURVE handshake with a CURVE server works.

The compass broker does not speak CURVE yet, so the server here is a small ROUTER in the test.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from pathlib import Path

import pytest
import zmq
from zmq.utils import z85

from compass_client import Client
from compass_client import protocol as p
from compass_client._socket import LoopOptions, make_socket
from compass_client.curve import CurveKeys

pytestmark = pytest.mark.skipif(not zmq.has("curve"), reason="libzmq without CURVE")


#: Options set through RecordingSocket. libzmq reads CURVE keys back only into 32- or 41-byte
#: buffers, which pyzmq's getsockopt does not pass, so the test records what was set instead.
RECORDED: dict[int, object] = {}


class RecordingSocket(zmq.Socket):
    def setsockopt(self, option: int, value: object) -> None:  # type: ignore[override]
        RECORDED[option] = value
        super().setsockopt(option, value)


class RecordingContext(zmq.Context):
    _socket_class = RecordingSocket


def test_keys_are_set_on_the_socket() -> None:
    server_public, _ = zmq.curve_keypair()
    client_public, client_secret = zmq.curve_keypair()
    keys = CurveKeys.from_options(server_public.decode(), client_public.decode(), client_secret)
    options = LoopOptions("tcp://127.0.0.1:1", "s", 1000, 3, 5000, 1 << 20, keys)
    context = RecordingContext()
    sock = make_socket(context, options, 0)
    try:
        assert sock.getsockopt(zmq.MECHANISM) == zmq.CURVE
        assert RECORDED[zmq.CURVE_SERVERKEY] == server_public
        assert RECORDED[zmq.CURVE_PUBLICKEY] == client_public
        assert RECORDED[zmq.CURVE_SECRETKEY] == client_secret
    finally:
        sock.close(linger=0)
        context.term()


def test_no_keys_no_curve() -> None:
    options = LoopOptions("tcp://127.0.0.1:1", "s", 1000, 3, 5000, 1 << 20, None)
    with zmq.Context() as context:
        sock = make_socket(context, options, 0)
        assert sock.getsockopt(zmq.MECHANISM) == zmq.NULL
        sock.close(linger=0)


def test_key_validation() -> None:
    server_public, _ = zmq.curve_keypair()
    assert CurveKeys.from_options(None, None, None) is None
    generated = CurveKeys.from_options(server_public, None, None)  # an ephemeral client pair
    assert generated is not None and len(generated.public_key) == 40
    raw = z85.decode(server_public)
    assert CurveKeys.from_options(raw, None, None).server_key == server_public  # type: ignore[union-attr]
    with pytest.raises(ValueError):
        CurveKeys.from_options(None, server_public, server_public)
    with pytest.raises(ValueError):
        CurveKeys.from_options(server_public, server_public, None)
    with pytest.raises(ValueError):
        CurveKeys.from_options("short", None, None)
    with tempfile.NamedTemporaryFile() as key_file, pytest.raises(ValueError, match="has no"):
        CurveKeys.from_options(key_file.name, None, None)


def test_hello_and_status_over_curve() -> None:
    server_public, server_secret = zmq.curve_keypair()
    client_public, client_secret = zmq.curve_keypair()
    with zmq.Context() as context, tempfile.TemporaryDirectory(dir="/tmp") as directory:
        endpoint = f"ipc://{Path(directory)}/curve"
        server = context.socket(zmq.ROUTER)
        server.curve_server = True
        server.curve_secretkey = server_secret
        server.bind(endpoint)
        seen: list[int] = []

        def serve() -> None:
            # Answer until a STATUS has been answered: HELLO -> WELCOME, HEARTBEAT -> HEARTBEAT.
            while server.poll(20_000):
                route, *frames = server.recv_multipart()
                command = frames[1][0]
                seen.append(command)
                if command == p.ProducerCommand.HELLO:
                    reply: p.Reply = p.WelcomeReply(frames[2].decode(), {"broker_id": "fake", "pending_results": 0})
                elif command == p.ProducerCommand.STATUS:
                    server.send_multipart([route, *p.StatusReply({"curve": True}).encode()])
                    return
                else:
                    reply = p.HeartbeatReply("fake")
                server.send_multipart([route, *reply.encode()])

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        with Client(endpoint, curve_server_key=server_public.decode(), curve_public_key=client_public.decode(),
                    curve_secret_key=client_secret.decode(), context=context) as client:
            assert client.status(timeout=20) == {"curve": True}
        thread.join(20)
        server.close(linger=0)
        assert seen[0] == p.ProducerCommand.HELLO


def _keys(directory: Path) -> None:
    """broker, producers/alice, workers/w1 and an unlisted mallory, made by `compass keys new`."""
    import subprocess

    from conftest import binary

    for name, sub in (("broker", ""), ("alice", "producers"), ("w1", "workers"), ("mallory", "")):
        subprocess.run([str(binary("compass")), "keys", "new", name, "--dir", str(directory / sub)],
                       check=True, capture_output=True, timeout=30)


def test_real_broker_admits_a_listed_key_and_refuses_an_unknown_one_cleanly(cluster) -> None:  # type: ignore[no-untyped-def]
    """Against the real compass-broker with CURVE: key files work; a bad key fails with a clear error."""
    _keys(cluster.dir)
    d = cluster.dir
    cluster.start_broker("--curve-secret", str(d / "broker.key"), "--allow-producers", str(d / "producers"),
                         "--allow-workers", str(d / "workers"))
    cluster.start_worker(flags=("--curve-server-key", str(d / "broker.pub"), "--curve-key", str(d / "workers" / "w1.key")))
    alice = cluster.client(curve_server_key=str(d / "broker.pub"), curve_secret_key=str(d / "producers" / "alice.key"))
    results = alice.submit([{"custom_id": "a", "prompt": "hello over curve"}], timeout=30)
    assert results[0].text == "curve over hello" and results[0].error is None

    mallory = cluster.client(curve_server_key=str(d / "broker.pub"), curve_secret_key=str(d / "mallory.key"))
    with pytest.raises(Exception) as refused:
        mallory.submit([{"custom_id": "m", "prompt": "let me in"}], timeout=30)
    assert "refused" in str(refused.value) and "allowlist" in str(refused.value)

    plain = cluster.client()
    with pytest.raises(Exception) as failed:
        plain.submit([{"custom_id": "p", "prompt": "no keys"}], timeout=30)
    assert "handshake" in str(failed.value)


def test_a_forty_character_path_is_read_as_a_file() -> None:
    """Every character of a path like /tmp/cab12/kkkk.pub is in the Z85 alphabet: at 40 characters
    it also reads as a key. The file must win, or the path itself becomes the "key"."""
    server_public, _ = zmq.curve_keypair()
    base = tempfile.mkdtemp(dir="/tmp", prefix="c")
    try:
        path = os.path.join(base, "k" * (40 - len(base) - 1 - len(".pub")) + ".pub")
        assert len(path) == 40
        with open(path, "w", encoding="utf-8") as f:
            f.write(f'curve\n    public-key = "{server_public.decode()}"\n')
        keys = CurveKeys.from_options(path, None, None)
        assert keys is not None and keys.server_key == server_public
    finally:
        shutil.rmtree(base, ignore_errors=True)
