"""HS256 JSON Web Tokens (RFC 7519) with the standard library: the short-lived credential of OTB boxes.

Keys come from ``settings.OTB_COMPAT_JWT_KEYS``: the first signs, every key verifies (rotation).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Sequence
from typing import Any

HEADER = {"alg": "HS256", "typ": "JWT"}


class JwtInvalid(Exception):
    """The token is malformed, not signed by any of our keys, or not HS256."""


class JwtExpired(Exception):
    """The signature is good but ``exp`` has passed."""


def _b64encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (ValueError, TypeError) as exc:
        raise JwtInvalid("bad base64") from exc


def _signature(signing_input: bytes, key: str | bytes) -> bytes:
    raw = key.encode() if isinstance(key, str) else key
    return hmac.new(raw, signing_input, hashlib.sha256).digest()


def jwt_encode(claims: dict[str, Any], keys: Sequence[str | bytes]) -> str:
    """Sign ``claims`` with the first key."""
    signing_input = (
        _b64encode(json.dumps(HEADER, separators=(",", ":")).encode())
        + "."
        + _b64encode(json.dumps(claims, separators=(",", ":")).encode())
    )
    return signing_input + "." + _b64encode(_signature(signing_input.encode(), keys[0]))


def jwt_decode(token: str, keys: Sequence[str | bytes], *, now: float, leeway: float = 0.0) -> dict[str, Any]:
    """The claims of a token signed by any of ``keys``; raises JwtInvalid, or JwtExpired once ``leeway``
    seconds past ``exp`` (0: at ``exp``)."""
    parts = token.split(".")
    if len(parts) != 3:
        raise JwtInvalid("not three parts")
    try:
        header = json.loads(_b64decode(parts[0]))
        claims = json.loads(_b64decode(parts[1]))
    except ValueError as exc:
        raise JwtInvalid("bad JSON") from exc
    if not isinstance(header, dict) or header.get("alg") != "HS256" or not isinstance(claims, dict):
        raise JwtInvalid("not an HS256 token")
    given = _b64decode(parts[2])
    signing_input = f"{parts[0]}.{parts[1]}".encode()
    if not any(hmac.compare_digest(given, _signature(signing_input, key)) for key in keys):
        raise JwtInvalid("bad signature")
    exp = claims.get("exp")
    if not isinstance(exp, int | float):
        raise JwtInvalid("no exp")
    if now >= exp + leeway:
        raise JwtExpired("expired")
    return claims
