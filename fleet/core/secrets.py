"""Secrets encrypted at rest (Fernet / MultiFernet), for every app: tunnel keys (``provisioning``),
webhook signing secrets (``fleet.monitoring``), configuration backups (``fleet.commands``).

Keys come from ``settings.OTB_SECRETS_KEYS``: the first key encrypts, every key decrypts, so a key
is rotated by putting a new one first, re-encrypting every stored ciphertext (``manage.py
secrets_reencrypt``, which walks the columns models list in ``encrypted_fields``), then dropping the
old one.

Two stored forms: text columns hold the Fernet token as it is (urlsafe base64, ``secret_encrypt``);
``bytea`` columns hold the token's raw bytes (``secret_encrypt_bytes``), which spares the 4/3 of base64
on large values: 57 to 73 bytes over the plaintext (version, timestamp, IV, AES-CBC padding, HMAC).
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
from collections.abc import Iterator
from functools import lru_cache

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.apps import apps
from django.conf import settings
from django.db import models, transaction

from fleet.core.audit import Actor, audit_record

# Rows re-encrypted per transaction: each batch locks its rows briefly, so a rotation on a live
# database never holds a long lock (a backup row is up to BACKUP_MAX_FILE_BYTES).
REENCRYPT_BATCH = 200


class SecretDecryptionError(Exception):
    """A ciphertext that none of the configured keys can open (wrong key set or corrupt row)."""


@lru_cache(maxsize=4)
def _fernet(keys: tuple[str, ...]) -> MultiFernet:
    if not keys:
        raise RuntimeError("settings.OTB_SECRETS_KEYS is empty: secrets cannot be encrypted")
    return MultiFernet([Fernet(key.encode() if isinstance(key, str) else key) for key in keys])


def _current() -> MultiFernet:
    return _fernet(tuple(settings.OTB_SECRETS_KEYS))


def _undecryptable(exc: Exception) -> SecretDecryptionError:
    error = SecretDecryptionError("a secret cannot be decrypted with the keys in OTB_SECRETS_KEYS")
    error.__cause__ = exc
    return error


def secret_encrypt(plaintext: str) -> str:
    """Ciphertext (a Fernet token) of ``plaintext`` under the first configured key."""
    return _current().encrypt(plaintext.encode("utf-8")).decode("ascii")


def secret_decrypt(ciphertext: str) -> str:
    """Plaintext of a ciphertext made with any configured key."""
    try:
        return _current().decrypt(ciphertext.encode("ascii")).decode("utf-8")
    except (InvalidToken, ValueError) as exc:
        raise _undecryptable(exc) from exc


def secret_reencrypt(ciphertext: str) -> str:
    """The same plaintext encrypted under the current first key (key rotation)."""
    try:
        return _current().rotate(ciphertext.encode("ascii")).decode("ascii")
    except (InvalidToken, ValueError) as exc:
        raise _undecryptable(exc) from exc


def secret_encrypt_bytes(plaintext: bytes) -> bytes:
    """The raw bytes of the Fernet token of ``plaintext`` under the first key (for a ``bytea`` column)."""
    return base64.urlsafe_b64decode(_current().encrypt(plaintext))


def secret_decrypt_bytes(ciphertext: bytes) -> bytes:
    """Plaintext of raw token bytes made by ``secret_encrypt_bytes`` with any configured key."""
    try:
        return _current().decrypt(base64.urlsafe_b64encode(bytes(ciphertext)))
    except (InvalidToken, ValueError, binascii.Error) as exc:
        raise _undecryptable(exc) from exc


def secret_reencrypt_bytes(ciphertext: bytes) -> bytes:
    """Raw token bytes of the same plaintext under the current first key (key rotation)."""
    try:
        return base64.urlsafe_b64decode(_current().rotate(base64.urlsafe_b64encode(bytes(ciphertext))))
    except (InvalidToken, ValueError, binascii.Error) as exc:
        raise _undecryptable(exc) from exc


# --- rotation -----------------------------------------------------------------------------------


@dataclasses.dataclass
class ReencryptResult:
    """What one column's re-encryption did: rows re-encrypted, and the primary keys of the rows no
    configured key opens (left as they were)."""

    label: str
    reencrypted: int = 0
    undecryptable: list[str] = dataclasses.field(default_factory=list)


def encrypted_columns() -> Iterator[tuple[type[models.Model], str]]:
    """Every ``(model, field name)`` holding a ciphertext: each model lists its own in a class
    attribute ``encrypted_fields``, so an app's new secret column is covered by declaring it there."""
    for model in apps.get_models():
        for name in getattr(model, "encrypted_fields", ()):
            yield model, name


def _reencrypted(value: str | bytes | memoryview) -> str | bytes:
    if isinstance(value, str):
        return secret_reencrypt(value)
    return secret_reencrypt_bytes(bytes(value))


def ciphertexts_reencrypt(
    model: type[models.Model], field: str, *, batch_size: int = REENCRYPT_BATCH
) -> ReencryptResult:
    """Re-encrypt one column under the current first key, ``batch_size`` rows per transaction (each
    batch locked ``FOR UPDATE`` in primary-key order, so a concurrent writer waits, never loses its
    write). Empty values are skipped; a value no key opens is counted, left alone and does not stop the
    walk. Safe to run again: every run re-encrypts under the first key."""
    result = ReencryptResult(label=f"{model._meta.label}.{field}")
    empty: str | bytes = b"" if isinstance(model._meta.get_field(field), models.BinaryField) else ""
    last = None
    while True:
        with transaction.atomic():
            queryset = model._default_manager.exclude(**{field: empty}).exclude(**{f"{field}__isnull": True})
            if last is not None:
                queryset = queryset.filter(pk__gt=last)
            rows = list(
                queryset.select_for_update(of=("self",)).order_by("pk").only("pk", field)[:batch_size]
            )
            if not rows:
                return result
            changed = []
            for row in rows:
                try:
                    setattr(row, field, _reencrypted(getattr(row, field)))
                except SecretDecryptionError:
                    result.undecryptable.append(str(row.pk))
                    continue
                changed.append(row)
            model._default_manager.bulk_update(changed, [field])
            result.reencrypted += len(changed)
            last = rows[-1].pk


def secrets_reencrypt(*, actor: Actor, batch_size: int = REENCRYPT_BATCH) -> list[ReencryptResult]:
    """Key rotation: re-encrypt every column of ``encrypted_columns()`` under the first key of
    ``OTB_SECRETS_KEYS`` and audit the run (counts only). Once no result lists an undecryptable row,
    the keys after the first one can be removed."""
    results = [
        ciphertexts_reencrypt(model, field, batch_size=batch_size) for model, field in encrypted_columns()
    ]
    with transaction.atomic():
        audit_record(
            actor=actor,
            action="secrets.reencrypt",
            after={
                result.label: {"reencrypted": result.reencrypted, "undecryptable": len(result.undecryptable)}
                for result in results
            },
        )
    return results
