"""CURVE keys for an encrypted, authenticated connection to the broker.

Keys are Z85 strings (40 characters, as ``zmq.curve_keypair()`` and ``compass keys show`` print
them), 32 raw bytes, or the certificate files ``compass keys new`` writes (ZeroMQ's zcert format:
``NAME.pub`` holds ``public-key = "..."``, ``NAME.key`` also ``secret-key = "..."``). With only a
secret key file, the public key is read from the same file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Optional, Union

import zmq
from zmq.utils import z85

Key = Union[str, bytes]


def certificate_value(path: str, field: str) -> Optional[str]:
    """The value of ``field = "..."`` in a zcert certificate file, or None."""
    with open(path, encoding="utf-8") as f:
        for line in f:
            name, sep, value = line.strip().partition("=")
            if sep and name.strip() == field:
                return value.strip().strip('"')
    return None


def z85_key(value: Key, what: str, field: str = "public-key") -> bytes:
    """The 40-byte Z85 form of a CURVE key given as Z85 text, 32 raw bytes, or a certificate file."""
    if isinstance(value, str):
        if len(value) != 40 and os.path.exists(value):
            found = certificate_value(value, field)
            if found is None:
                raise ValueError(f"{what}: {value} has no '{field} = \"...\"' line (is it the right file?)")
            value = found
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
        if public is None and isinstance(secret, str) and os.path.exists(secret):
            public = secret  # a secret certificate holds the public key too
        if (public is None) != (secret is None):
            raise ValueError("curve_public_key and curve_secret_key go together")
        if not zmq.has("curve"):
            raise RuntimeError("this libzmq was built without CURVE support")
        if public is None or secret is None:
            # An ephemeral identity: enough when the broker admits any client key.
            generated_public, generated_secret = zmq.curve_keypair()
            return cls(z85_key(server, "curve_server_key"), generated_public, generated_secret)
        return cls(z85_key(server, "curve_server_key"), z85_key(public, "curve_public_key"),
                   z85_key(secret, "curve_secret_key", field="secret-key"))

    def apply(self, socket: zmq.Socket[Any]) -> None:
        """Makes ``socket`` a CURVE client of the server key (before connect)."""
        socket.setsockopt(zmq.CURVE_SERVERKEY, self.server_key)
        socket.setsockopt(zmq.CURVE_PUBLICKEY, self.public_key)
        socket.setsockopt(zmq.CURVE_SECRETKEY, self.secret_key)
