"""The agent's pure-Python ed25519 verification against the RFC 8032 test vectors (section 7.1)."""

from __future__ import annotations

import hashlib
import io

import pytest
from otb_agent import ed25519

# (public key, message, signature) from RFC 8032, section 7.1: TEST 1, 2, 3 and SHA(abc).
VECTORS = [
    (
        "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
        "",
        "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b",
    ),
    (
        "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
        "72",
        "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00",
    ),
    (
        "fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025",
        "af82",
        "6291d657deec24024827e69c3abe01a30ce548a284743a445e3680d7db5ac3ac18ff9b538d16f290ae67f760984dc6594a7c15e9716ed28dc027beceea1ec40a",
    ),
    (
        "ec172b93ad5e563bf4932c70e1245034c35467ef2efd4d64ebf819683467e2bf",
        "ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f",
        "dc2a4459e7369633a52b1bf277839a00201009a3efbf3ecb69bea2186c26b58909351fc9ac90b3ecfdfbc7c66431e0303dca179c138ac17ad9bef1177331a704",
    ),
]


@pytest.mark.parametrize(("public", "message", "signature"), VECTORS)
def test_rfc8032_vectors_verify(public: str, message: str, signature: str) -> None:
    # given an RFC 8032 vector, when verified (whole and streamed), then it passes
    key, msg, sig = bytes.fromhex(public), bytes.fromhex(message), bytes.fromhex(signature)
    ed25519.verify(key, sig, msg)
    ed25519.verify_stream(key, sig, io.BytesIO(msg), chunk_size=7)
    assert ed25519.is_valid(key, sig, msg)


@pytest.mark.parametrize(("public", "message", "signature"), VECTORS)
def test_any_change_is_refused(public: str, message: str, signature: str) -> None:
    key, msg, sig = bytes.fromhex(public), bytes.fromhex(message), bytes.fromhex(signature)
    # a changed message, a flipped signature bit, another key
    assert not ed25519.is_valid(key, sig, msg + b"\x00")
    flipped = bytearray(sig)
    flipped[5] ^= 0x01
    assert not ed25519.is_valid(key, bytes(flipped), msg)
    other_key = bytes.fromhex(VECTORS[(VECTORS.index((public, message, signature)) + 1) % 4][0])
    assert not ed25519.is_valid(other_key, sig, msg)


def test_malformed_inputs_are_refused_with_a_reason() -> None:
    key, msg, sig = bytes.fromhex(VECTORS[1][0]), bytes.fromhex(VECTORS[1][1]), bytes.fromhex(VECTORS[1][2])
    with pytest.raises(ed25519.BadSignature, match="64 bytes"):
        ed25519.verify(key, sig[:63], msg)
    with pytest.raises(ed25519.BadSignature, match="32 bytes"):
        ed25519.verify(key[:31], sig, msg)
    # S >= L (S + L would verify in a lax implementation: malleability)
    s = int.from_bytes(sig[32:], "little") + ed25519.L
    with pytest.raises(ed25519.BadSignature, match="out of range"):
        ed25519.verify(key, sig[:32] + s.to_bytes(32, "little"), msg)
    # a y coordinate >= p does not decode
    with pytest.raises(ed25519.BadSignature, match="not a valid curve point"):
        ed25519.verify(b"\xff" * 32, sig, msg)


def test_a_large_stream_verifies_against_cryptography() -> None:
    # given a 3 MB image signed by the server-side library
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    private = Ed25519PrivateKey.from_private_bytes(hashlib.sha256(b"k").digest())
    public = private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    image = hashlib.sha256(b"x").digest() * 100_000
    signature = private.sign(image)
    # then the streamed verification agrees, and a one-byte change is caught
    ed25519.verify_stream(public, signature, io.BytesIO(image))
    with pytest.raises(ed25519.BadSignature):
        ed25519.verify_stream(public, signature, io.BytesIO(image[:-1] + b"\x00"))
