"""OpenWrt ``usign`` files for our firmware signatures: what a stock OverTheBox box verifies with
``usign -V -m img.gz -P /etc/opkg/keys`` before it runs ``sysupgrade``.

usign signs with plain Ed25519 (RFC 8032) over the file's bytes, like our own firmware signatures
(``manage.py sign_firmware``: base64 of the 64-byte signature, stored on ``Release.signature``). Its
files are one ``untrusted comment: …`` line, then base64 of a packed structure:

- public key: ``"Ed"`` + key fingerprint (8 bytes) + public key (32 bytes);
- signature: ``"Ed"`` + the signing key's fingerprint (8 bytes) + Ed25519 signature (64 bytes);
- secret key (``usign -G``): ``"Ed"``, ``"BK"``, KDF rounds (u32, big-endian, 0), salt (16), checksum
  (8, the first bytes of SHA-512 of the 64-byte secret key), fingerprint (8), secret key (64: seed +
  public key).

The box finds the public key by the signature's fingerprint: the file ``/etc/opkg/keys/<fingerprint>``,
the fingerprint written as a big-endian 64-bit number in lowercase hex without leading zeros. usign
picks fingerprints at random; ours is derived from the public key (the first 8 bytes of its SHA-256),
so the server can wrap a signature made offline without ever holding the private key.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import struct

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

ALGORITHM = b"Ed"
FINGERPRINT_BYTES = 8


class UsignError(ValueError):
    """A key or signature that is not what usign expects."""


def public_key_bytes(public_key_b64: str) -> bytes:
    """The raw 32-byte Ed25519 public key from its base64 (``OTB_FIRMWARE_SIGNING_PUBLIC_KEY``)."""
    try:
        raw = base64.b64decode(public_key_b64.strip(), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise UsignError("the public key is not base64") from exc
    if len(raw) != 32:
        raise UsignError("an Ed25519 public key is 32 bytes")
    return raw


def fingerprint(public_key: bytes) -> bytes:
    """Our key id for a public key: the first 8 bytes of its SHA-256."""
    return hashlib.sha256(public_key).digest()[:FINGERPRINT_BYTES]


def fingerprint_name(fp: bytes) -> str:
    """The name usign gives the key file of ``fp`` in a keys directory (``%PRIx64``)."""
    return format(int.from_bytes(fp, "big"), "x")


def _file(comment: str, packed: bytes) -> str:
    return f"untrusted comment: {comment}\n{base64.b64encode(packed).decode('ascii')}\n"


def public_key_file(public_key: bytes) -> str:
    """The content of ``/etc/opkg/keys/<fingerprint_name>`` for our public key."""
    fp = fingerprint(public_key)
    return _file(f"otb-fleet firmware public key {fingerprint_name(fp)}", ALGORITHM + fp + public_key)


def signature_file(signature: bytes, public_key: bytes) -> str:
    """The ``<image>.sig`` usign reads for a detached Ed25519 ``signature`` by ``public_key``."""
    if len(signature) != 64:
        raise UsignError("an Ed25519 signature is 64 bytes")
    fp = fingerprint(public_key)
    return _file(f"signed by key {fingerprint_name(fp)}", ALGORITHM + fp + signature)


def signature_file_from_b64(signature_b64: str, public_key_b64: str) -> str:
    """``signature_file`` from the base64 forms stored on a release and in the settings."""
    try:
        signature = base64.b64decode(signature_b64.strip(), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise UsignError("the signature is not base64") from exc
    return signature_file(signature, public_key_bytes(public_key_b64))


def _payload(text: str) -> bytes:
    lines = text.splitlines()
    if len(lines) < 2 or not lines[0].startswith("untrusted comment:"):
        raise UsignError("a usign file starts with an 'untrusted comment:' line")
    try:
        return base64.b64decode(lines[1].strip(), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise UsignError("the second line is not base64") from exc


def signature_parse(text: str) -> tuple[bytes, bytes]:
    """(fingerprint, Ed25519 signature) of a usign signature file."""
    packed = _payload(text)
    if len(packed) != 2 + FINGERPRINT_BYTES + 64 or packed[:2] != ALGORITHM:
        raise UsignError("not an Ed25519 usign signature")
    return packed[2:10], packed[10:]


def public_key_parse(text: str) -> tuple[bytes, bytes]:
    """(fingerprint, public key) of a usign public key file."""
    packed = _payload(text)
    if len(packed) != 2 + FINGERPRINT_BYTES + 32 or packed[:2] != ALGORITHM:
        raise UsignError("not an Ed25519 usign public key")
    return packed[2:10], packed[10:]


def secret_key_file(private_key: Ed25519PrivateKey) -> str:
    """A usign secret key file (unencrypted, as ``usign -G`` writes) for ``private_key``; with it an
    operator can also sign with ``usign -S``. Its fingerprint is ours (from the public key)."""
    seed = private_key.private_bytes_raw()
    public = private_key.public_key().public_bytes_raw()
    secret = seed + public
    checksum = hashlib.sha512(secret).digest()[:8]
    salt = hashlib.sha256(b"otb-fleet usign salt" + public).digest()[:16]
    packed = ALGORITHM + b"BK" + struct.pack(">I", 0) + salt + checksum + fingerprint(public) + secret
    return _file(f"otb-fleet firmware private key {fingerprint_name(fingerprint(public))}", packed)


def sign(data: bytes, private_key: Ed25519PrivateKey) -> str:
    """A usign signature file of ``data`` (what ``usign -S`` writes)."""
    return signature_file(private_key.sign(data), private_key.public_key().public_bytes_raw())


def verify(data: bytes, signature_text: str, public_key_text: str) -> bool:
    """What ``usign -V`` checks: Ed25519 algorithm in both files and the signature over ``data``."""
    _, signature = signature_parse(signature_text)
    _, public = public_key_parse(public_key_text)
    try:
        Ed25519PublicKey.from_public_bytes(public).verify(signature, data)
    except Exception:  # cryptography's InvalidSignature
        return False
    return True
