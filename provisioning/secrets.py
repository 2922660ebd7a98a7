"""Tunnel secrets: their generators, and their encryption at rest (Fernet / MultiFernet).

The encryption lives in ``fleet.core.secrets`` (shared with webhook secrets and configuration backups)
and is re-exported here. Keys come from ``settings.OTB_SECRETS_KEYS``: the first key encrypts, every
key decrypts, so a key is rotated by putting a new one first, re-encrypting (``manage.py
secrets_reencrypt``), then dropping the old one.
"""

from __future__ import annotations

import base64
import re
import secrets

from fleet.core.secrets import SecretDecryptionError, secret_decrypt, secret_encrypt, secret_reencrypt

__all__ = [
    "UCI_SAFE",
    "SecretDecryptionError",
    "password_generate",
    "secret_decrypt",
    "secret_encrypt",
    "secret_reencrypt",
    "symmetric_key_generate",
    "wireguard_key_generate",
]

# The characters a generated key or password may hold: a stock OverTheBox box pastes config values
# unquoted into ``uci batch`` (whitespace splits, ``#``/``;`` truncate, quotes vanish, ``\`` escapes),
# so every credential served to it must stay within this set (docs/otb-protocol.md).
UCI_SAFE = r"[A-Za-z0-9_.:/+=-]*"
_UCI_SAFE = re.compile(UCI_SAFE)


def _uci_safe(value: str) -> str:
    """``value``, or RuntimeError if a generator ever produced a character outside ``UCI_SAFE``."""
    if not _UCI_SAFE.fullmatch(value):
        raise RuntimeError("a generated credential holds a character outside [A-Za-z0-9_.:/+=-]")
    return value


def wireguard_key_generate() -> str:
    """A random 32-byte WireGuard preshared key, base64 encoded as ``wg genpsk`` prints it."""
    return _uci_safe(base64.b64encode(secrets.token_bytes(32)).decode("ascii"))


def symmetric_key_generate() -> str:
    """A random 32-byte key, hex encoded (the glorytun key file format)."""
    return _uci_safe(secrets.token_hex(32))


def password_generate() -> str:
    """A random shadowsocks password (32 bytes of entropy, URL-safe: within ``UCI_SAFE``)."""
    return _uci_safe(secrets.token_urlsafe(32))
