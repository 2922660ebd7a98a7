"""OpenWrt usign files (otbcompat/usign.py), checked against the format usign itself reads: the packed
structures, the key file name a box looks up, and Ed25519 over the file's bytes."""

from __future__ import annotations

import base64
import hashlib

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from otbcompat import usign

DATA = b"an OverTheBox image\x00\x01" * 1000


def test_a_signature_made_here_is_what_usign_reads() -> None:
    key = Ed25519PrivateKey.generate()
    public = key.public_key().public_bytes_raw()
    text = usign.sign(DATA, key)
    comment, encoded, end = text.split("\n")
    assert end == "" and comment.startswith("untrusted comment: signed by key ")
    packed = base64.b64decode(encoded)
    # "Ed", an 8-byte fingerprint, the 64-byte signature
    assert len(packed) == 74 and packed[:2] == b"Ed"
    assert packed[2:10] == hashlib.sha256(public).digest()[:8]
    key.public_key().verify(packed[10:], DATA)  # plain Ed25519 over the bytes
    assert usign.verify(DATA, text, usign.public_key_file(public))
    assert not usign.verify(DATA + b"x", text, usign.public_key_file(public))
    other = Ed25519PrivateKey.generate().public_key().public_bytes_raw()
    assert not usign.verify(DATA, text, usign.public_key_file(other))


def test_the_key_file_is_named_by_the_fingerprint_as_usign_prints_it() -> None:
    # usign looks up <dir>/<fingerprint as %PRIx64>: big-endian, lowercase, no leading zeros
    assert usign.fingerprint_name(bytes.fromhex("6bc78405bb9b7cc3")) == "6bc78405bb9b7cc3"
    assert usign.fingerprint_name(bytes.fromhex("00000405bb9b7cc3")) == "405bb9b7cc3"
    public = Ed25519PrivateKey.generate().public_key().public_bytes_raw()
    text = usign.public_key_file(public)
    fp, parsed = usign.public_key_parse(text)
    assert parsed == public and fp == usign.fingerprint(public)
    assert text.splitlines()[0].endswith(usign.fingerprint_name(fp))


def test_a_release_signature_is_wrapped_without_the_private_key() -> None:
    key = Ed25519PrivateKey.generate()
    signature_b64 = base64.b64encode(key.sign(DATA)).decode()
    public_b64 = base64.b64encode(key.public_key().public_bytes_raw()).decode()
    text = usign.signature_file_from_b64(signature_b64, public_b64)
    assert text == usign.sign(DATA, key)  # Ed25519 is deterministic
    assert usign.verify(DATA, text, usign.public_key_file(key.public_key().public_bytes_raw()))


def test_the_secret_key_file_has_usigns_layout() -> None:
    key = Ed25519PrivateKey.generate()
    packed = base64.b64decode(usign.secret_key_file(key).splitlines()[1])
    assert len(packed) == 2 + 2 + 4 + 16 + 8 + 8 + 64
    assert packed[:4] == b"EdBK" and packed[4:8] == b"\x00\x00\x00\x00"  # no KDF rounds
    secret = packed[40:]
    assert secret[:32] == key.private_bytes_raw() and secret[32:] == key.public_key().public_bytes_raw()
    assert packed[24:32] == hashlib.sha512(secret).digest()[:8]


@pytest.mark.parametrize(
    ("signature", "public"),
    [("not base64!", "A" * 44), (base64.b64encode(b"short").decode(), "A" * 44), ("A" * 88, "AAAA")],
)
def test_bad_inputs_are_refused(signature: str, public: str) -> None:
    with pytest.raises(usign.UsignError):
        usign.signature_file_from_b64(signature, public)


def test_files_that_are_not_usign_are_refused() -> None:
    for text in ("", "no comment\nAAAA\n", "untrusted comment: x\n!!!\n", "untrusted comment: x\nAAAA\n"):
        with pytest.raises(usign.UsignError):
            usign.signature_parse(text)


def test_the_key_file_for_the_boxes_is_printed_with_its_path() -> None:
    from tests.conftest import management_command_run

    key = Ed25519PrivateKey.generate()
    public = key.public_key().public_bytes_raw()
    code, out = management_command_run(
        "firmware_usign_key", "--public-key", base64.b64encode(public).decode()
    )
    assert code == 0
    path, content = out.split("\n", 1)
    assert path == f"/etc/opkg/keys/{usign.fingerprint_name(usign.fingerprint(public))}"
    assert usign.verify(DATA, usign.sign(DATA, key), content)
    from django.core.management.base import CommandError

    with pytest.raises(CommandError, match="32 bytes"):
        management_command_run("firmware_usign_key", "--public-key", "AAAA")
