"""Firmware signing keys and detached signatures: ed25519 (RFC 8032) over the image bytes, base64.

One reading of a private key file for ``manage.py sign_firmware`` and the service's own key
(``OTB_FIRMWARE_SIGNING_KEY_FILE``), and one reading of a detached signature file as staff upload it.
"""

from __future__ import annotations

import base64
import binascii
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

SIGNATURE_BYTES = 64


def private_key_load(path: Path) -> Ed25519PrivateKey:
    """The ed25519 private key in ``path``: PKCS#8 PEM (``firmware_keygen``) or the base64 of a raw
    32-byte seed. Raises ValueError saying what is wrong (OSError when it cannot be read)."""
    data = path.read_bytes()
    if b"PRIVATE KEY" in data:
        key = serialization.load_pem_private_key(data, password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError(f"{path} is not an ed25519 private key")
        return key
    try:
        seed = base64.b64decode(data.strip(), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"{path}: neither a PEM key nor base64") from exc
    if len(seed) != 32:
        raise ValueError(f"{path}: a raw ed25519 seed is 32 bytes")
    return Ed25519PrivateKey.from_private_bytes(seed)


def public_key_b64(key: Ed25519PrivateKey) -> str:
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode()


def signature_from_file(data: bytes) -> str:
    """A detached signature file as staff have it, as the base64 text a release stores: either the
    raw 64 bytes (``openssl pkeyutl -sign -rawin``) or their base64 (``manage.py sign_firmware``).
    Raises ValueError when it is neither."""
    if len(data) == SIGNATURE_BYTES:  # the base64 of 64 bytes is 88 characters: these are raw
        return base64.b64encode(data).decode()
    try:
        text = data.decode("ascii").strip()
        raw = base64.b64decode(text, validate=True)
    except (UnicodeDecodeError, binascii.Error, ValueError) as exc:
        raise ValueError("neither the raw 64 bytes of an ed25519 signature nor their base64") from exc
    if len(raw) != SIGNATURE_BYTES:
        raise ValueError(f"an ed25519 signature is {SIGNATURE_BYTES} bytes, this one is {len(raw)}")
    return text
