"""Field rules of a box shared by the services and the serializers: serial, MAC address, factory
secrets and claim codes, WireGuard public keys, short labels. Each raises ``InvalidInput`` naming the
field."""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any

from otb_protocol import SERIAL_RE

from fleet.core.errors import InvalidInput

SECRET_MIN, SECRET_MAX = 8, 128


def serial_clean(value: Any, *, field: str = "serial") -> str:
    """A serial: 1 to 64 ASCII letters, digits, dot, underscore or dash."""
    if not isinstance(value, str) or not SERIAL_RE.fullmatch(value.strip()):
        raise InvalidInput("a serial is 1 to 64 characters from A-Z a-z 0-9 . _ -", field=field)
    return value.strip()


def mac_normalise(value: Any, *, field: str = "mac") -> str:
    """A MAC address in lowercase colon form; accepts colons, dashes, dots or no separator."""
    if not isinstance(value, str):
        raise InvalidInput("a MAC address is a string", field=field)
    hexdigits = re.sub(r"[:.\-]", "", value.strip()).lower()
    if not re.fullmatch(r"[0-9a-f]{12}", hexdigits):
        raise InvalidInput("not a MAC address (expected 12 hex digits, e.g. 00:11:22:aa:bb:cc)", field=field)
    return ":".join(hexdigits[i : i + 2] for i in range(0, 12, 2))


def secret_clean(value: Any, *, field: str) -> str:
    if not isinstance(value, str) or not SECRET_MIN <= len(value) <= SECRET_MAX or not value.isascii():
        raise InvalidInput(f"must be {SECRET_MIN} to {SECRET_MAX} ASCII characters", field=field)
    if not value.isprintable() or value != value.strip():
        raise InvalidInput("must not contain spaces at the ends or control characters", field=field)
    return value


def wg_public_key_clean(value: Any, *, field: str = "wg_public_key") -> str:
    """A WireGuard public key: standard base64 of exactly 32 bytes."""
    if not isinstance(value, str) or len(value) != 44:
        raise InvalidInput("a WireGuard public key is base64 of 32 bytes (44 characters)", field=field)
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidInput("a WireGuard public key is base64 of 32 bytes", field=field) from exc
    if len(raw) != 32:
        raise InvalidInput("a WireGuard public key is base64 of 32 bytes", field=field)
    return value


def short_text_clean(value: Any, *, field: str, max_length: int = 64) -> str:
    if not isinstance(value, str) or len(value) > max_length or not value.isprintable():
        raise InvalidInput(f"must be printable text of at most {max_length} characters", field=field)
    return value.strip()
