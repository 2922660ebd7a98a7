"""Symmetric tunnel secrets encrypted at rest (Fernet / MultiFernet).

Keys come from ``settings.OTB_SECRETS_KEYS``: the first key encrypts, every key decrypts, so a key
is rotated by putting a new one first, re-encrypting (``secret_reencrypt``), then dropping the old one.
"""

from __future__ import annotations

import base64
import re
import secrets
from functools import lru_cache

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings

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


class SecretDecryptionError(Exception):
    """A ciphertext that none of the configured keys can open (wrong key set or corrupt row)."""


@lru_cache(maxsize=4)
def _fernet(keys: tuple[str, ...]) -> MultiFernet:
    if not keys:
        raise RuntimeError("settings.OTB_SECRETS_KEYS is empty: tunnel secrets cannot be encrypted")
    return MultiFernet([Fernet(key.encode() if isinstance(key, str) else key) for key in keys])


def _current() -> MultiFernet:
    return _fernet(tuple(settings.OTB_SECRETS_KEYS))


def secret_encrypt(plaintext: str) -> str:
    """Ciphertext (a Fernet token) of ``plaintext`` under the first configured key."""
    return _current().encrypt(plaintext.encode("utf-8")).decode("ascii")


def secret_decrypt(ciphertext: str) -> str:
    """Plaintext of a ciphertext made with any configured key."""
    try:
        return _current().decrypt(ciphertext.encode("ascii")).decode("utf-8")
    except (InvalidToken, ValueError) as exc:
        raise SecretDecryptionError("tunnel secret cannot be decrypted with the configured keys") from exc


def secret_reencrypt(ciphertext: str) -> str:
    """The same plaintext encrypted under the current first key (key rotation)."""
    try:
        return _current().rotate(ciphertext.encode("ascii")).decode("ascii")
    except (InvalidToken, ValueError) as exc:
        raise SecretDecryptionError("tunnel secret cannot be decrypted with the configured keys") from exc


def wireguard_key_generate() -> str:
    """A random 32-byte WireGuard preshared key, base64 encoded as ``wg genpsk`` prints it."""
    return _uci_safe(base64.b64encode(secrets.token_bytes(32)).decode("ascii"))


def symmetric_key_generate() -> str:
    """A random 32-byte key, hex encoded (the glorytun key file format)."""
    return _uci_safe(secrets.token_hex(32))


def password_generate() -> str:
    """A random shadowsocks password (32 bytes of entropy, URL-safe: within ``UCI_SAFE``)."""
    return _uci_safe(secrets.token_urlsafe(32))
