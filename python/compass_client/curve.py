"""CURVE keys for an encrypted, authenticated connection to the broker.

The broker does not speak CURVE yet; this is the client half, ready for when it does. Keys are
Z85 strings (40 characters, as ``zmq.curve_keypair()`` and ``compass keys new`` print them) or
32 raw bytes. Key files (``compass keys new`` writes them) get a format later; until then a path
is refused with a clear message rather than guessed at.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Optional, Union

import zmq
from zmq.utils import z85

Key = Union[str, bytes]


def z85_key(value: Key, what: str) -> bytes:
    """The 40-byte Z85 form of a CURVE key given as Z85 text or 32 raw bytes."""
    if isinstance(value, str):
        if len(value) != 40 and os.path.exists(value):
            raise ValueError(f"{what}: key files are not supported yet; pass the Z85 key (40 characters) itself")
        value = value.encode("ascii", errors="strict")
    if len(value) == 32:
        return z85.encode(value)
    if len(value) == 40:
        z85.decode(value)  # raises on characters outside the Z85 alphabet
        return value
    raise ValueError(f"{what} must be a Z85 key of 40 characters or 32 raw bytes, got {len(value)}")


@dataclass(frozen=True)
class CurveKeys:
    """The broker's public key and this client's key pair, all in Z85."""

    server_key: bytes
    public_key: bytes
    secret_key: bytes

    @classmethod
    def from_options(cls, server: Optional[Key], public: Optional[Key], secret: Optional[Key]) -> Optional[CurveKeys]:
        """None when no key is given; a client pair is generated when only the server key is."""
        if server is None and public is None and secret is None:
            return None
        if server is None:
            raise ValueError("curve_server_key is required when CURVE keys are given")
        if (public is None) != (secret is None):
            raise ValueError("curve_public_key and curve_secret_key go together")
        if not zmq.has("curve"):
            raise RuntimeError("this libzmq was built without CURVE support")
        if public is None or secret is None:
            # An ephemeral identity: enough when the broker admits any client key.
            generated_public, generated_secret = zmq.curve_keypair()
            return cls(z85_key(server, "curve_server_key"), generated_public, generated_secret)
        return cls(z85_key(server, "curve_server_key"), z85_key(public, "curve_public_key"),
                   z85_key(secret, "curve_secret_key"))

    def apply(self, socket: zmq.Socket[Any]) -> None:
        """Makes ``socket`` a CURVE client of the server key (before connect)."""
        socket.setsockopt(zmq.CURVE_SERVERKEY, self.server_key)
        socket.setsockopt(zmq.CURVE_PUBLICKEY, self.public_key)
        socket.setsockopt(zmq.CURVE_SECRETKEY, self.secret_key)
