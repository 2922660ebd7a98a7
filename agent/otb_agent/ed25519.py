"""Ed25519 signature verification (RFC 8032, section 5.1.7), pure Python, stdlib only.

The agent only ever verifies: firmware images are signed by the operator with
``manage.py sign_firmware``; the public key reaches the box in its configuration. Points are
kept in extended homogeneous coordinates so one verification costs two scalar multiplications
(a few tens of milliseconds in CPython, negligible next to downloading an image).

Verification is strict in the ways RFC 8032 requires: ``S`` must be below the group order,
``R`` and ``A`` must decode to curve points, and the check is the cofactorless
``[S]B == R + [k]A``. The message may be streamed (``verify_stream``) so a large image never has
to sit in memory: only SHA-512 over ``R || A || M`` depends on it.
"""

from __future__ import annotations

import hashlib
from typing import BinaryIO, Iterable, Optional, Tuple

P = 2**255 - 19
L = 2**252 + 27742317777372353535851937790883648493
D = (-121665 * pow(121666, P - 2, P)) % P
SQRT_M1 = pow(2, (P - 1) // 4, P)

Point = Tuple[int, int, int, int]  # extended coordinates (X, Y, Z, T), x = X/Z, y = Y/Z, xy = T/Z


class BadSignature(ValueError):
    """The signature, the public key or the message does not verify."""


def _recover_x(y: int, sign: int) -> Optional[int]:
    if y >= P:
        return None
    x2 = (y * y - 1) * pow(D * y * y + 1, P - 2, P) % P
    if x2 == 0:
        return None if sign else 0
    x = pow(x2, (P + 3) // 8, P)
    if (x * x - x2) % P != 0:
        x = x * SQRT_M1 % P
    if (x * x - x2) % P != 0:
        return None
    if (x & 1) != sign:
        x = P - x
    return x


_BY = 4 * pow(5, P - 2, P) % P
_BX = _recover_x(_BY, 0)
assert _BX is not None
BASE: Point = (_BX, _BY, 1, _BX * _BY % P)
IDENTITY: Point = (0, 1, 1, 0)


def _add(p: Point, q: Point) -> Point:
    a = (p[1] - p[0]) * (q[1] - q[0]) % P
    b = (p[1] + p[0]) * (q[1] + q[0]) % P
    c = 2 * p[3] * q[3] * D % P
    d = 2 * p[2] * q[2] % P
    e, f, g, h = b - a, d - c, d + c, b + a
    return (e * f % P, g * h % P, f * g % P, e * h % P)


def _mul(scalar: int, point: Point) -> Point:
    result = IDENTITY
    addend = point
    while scalar > 0:
        if scalar & 1:
            result = _add(result, addend)
        addend = _add(addend, addend)
        scalar >>= 1
    return result


def _equal(p: Point, q: Point) -> bool:
    # x1/z1 == x2/z2 and y1/z1 == y2/z2, without inversions.
    return (p[0] * q[2] - q[0] * p[2]) % P == 0 and (p[1] * q[2] - q[1] * p[2]) % P == 0


def _decompress(data: bytes) -> Optional[Point]:
    if len(data) != 32:
        return None
    y = int.from_bytes(data, "little")
    sign = y >> 255
    y &= (1 << 255) - 1
    x = _recover_x(y, sign)
    if x is None:
        return None
    return (x, y, 1, x * y % P)


def _check(public_key: bytes, signature: bytes, chunks: Iterable[bytes]) -> None:
    if len(public_key) != 32:
        raise BadSignature("public key must be 32 bytes")
    if len(signature) != 64:
        raise BadSignature("signature must be 64 bytes")
    a_point = _decompress(public_key)
    if a_point is None:
        raise BadSignature("public key is not a valid curve point")
    r_bytes = signature[:32]
    r_point = _decompress(r_bytes)
    if r_point is None:
        raise BadSignature("signature R is not a valid curve point")
    s = int.from_bytes(signature[32:], "little")
    if s >= L:
        raise BadSignature("signature S is out of range")
    h = hashlib.sha512()
    h.update(r_bytes)
    h.update(public_key)
    for chunk in chunks:
        h.update(chunk)
    k = int.from_bytes(h.digest(), "little") % L
    if not _equal(_mul(s, BASE), _add(r_point, _mul(k, a_point))):
        raise BadSignature("signature does not match")


def verify(public_key: bytes, signature: bytes, message: bytes) -> None:
    """Raise :class:`BadSignature` unless ``signature`` is ``public_key``'s signature of ``message``."""
    _check(public_key, signature, [message])


def verify_stream(public_key: bytes, signature: bytes, stream: BinaryIO, chunk_size: int = 1 << 20) -> None:
    """Like :func:`verify` for a message read from a binary file object (read to its end)."""

    def chunks() -> Iterable[bytes]:
        while True:
            chunk = stream.read(chunk_size)
            if not chunk:
                return
            yield chunk

    _check(public_key, signature, chunks())


def is_valid(public_key: bytes, signature: bytes, message: bytes) -> bool:
    try:
        verify(public_key, signature, message)
    except BadSignature:
        return False
    return True
