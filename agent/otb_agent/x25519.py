"""X25519 (RFC 7748) in pure Python, and WireGuard-style key encoding.

Used to generate the box's WireGuard key pair without ``wg`` or ``cryptography``
installed. Keys are base64 of the 32 raw bytes, like ``wg genkey`` / ``wg pubkey``.
"""

from __future__ import annotations

import base64
import os

P = 2**255 - 19
A24 = 121665
BASE_POINT = (9).to_bytes(32, "little")


def _decode_u(u: bytes) -> int:
    if len(u) != 32:
        raise ValueError("u-coordinate must be 32 bytes")
    b = bytearray(u)
    b[31] &= 0x7F  # mask the most significant bit (RFC 7748 section 5)
    return int.from_bytes(b, "little")


def clamp(k: bytes) -> bytes:
    if len(k) != 32:
        raise ValueError("scalar must be 32 bytes")
    b = bytearray(k)
    b[0] &= 248
    b[31] &= 127
    b[31] |= 64
    return bytes(b)


def x25519(k: bytes, u: bytes) -> bytes:
    """Scalar multiplication on Curve25519 (Montgomery ladder, RFC 7748 section 5)."""
    scalar = int.from_bytes(clamp(k), "little")
    x1 = _decode_u(u) % P
    x2, z2, x3, z3 = 1, 0, x1, 1
    swap = 0
    for t in range(254, -1, -1):
        k_t = (scalar >> t) & 1
        swap ^= k_t
        if swap:
            x2, x3 = x3, x2
            z2, z3 = z3, z2
        swap = k_t
        a = (x2 + z2) % P
        aa = a * a % P
        b = (x2 - z2) % P
        bb = b * b % P
        e = (aa - bb) % P
        c = (x3 + z3) % P
        d = (x3 - z3) % P
        da = d * a % P
        cb = c * b % P
        x3 = (da + cb) % P
        x3 = x3 * x3 % P
        z3 = (da - cb) % P
        z3 = x1 * (z3 * z3 % P) % P
        x2 = aa * bb % P
        z2 = e * ((aa + A24 * e) % P) % P
    if swap:
        x2, x3 = x3, x2
        z2, z3 = z3, z2
    return (x2 * pow(z2, P - 2, P) % P).to_bytes(32, "little")


def generate_private_key() -> bytes:
    return clamp(os.urandom(32))


def public_key(private_key: bytes) -> bytes:
    return x25519(private_key, BASE_POINT)


def b64(key: bytes) -> str:
    return base64.b64encode(key).decode("ascii")


def from_b64(text: str) -> bytes:
    raw = base64.b64decode(text.strip(), validate=True)
    if len(raw) != 32:
        raise ValueError("key must be 32 bytes")
    return raw


def generate_keypair_b64() -> "tuple[str, str]":
    """Return (private, public) as WireGuard base64 strings."""
    priv = generate_private_key()
    return b64(priv), b64(public_key(priv))
