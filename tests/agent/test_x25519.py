"""X25519 (otb_agent.x25519) against the RFC 7748 vectors, and WireGuard-style key pairs."""

from __future__ import annotations

import base64

import pytest
from otb_agent import x25519


def h(s: str) -> bytes:
    return bytes.fromhex(s)


@pytest.mark.parametrize(
    ("k", "u", "out"),
    [
        (
            "a546e36bf0527c9d3b16154b82465edd62144c0ac1fc5a18506a2244ba449ac4",
            "e6db6867583030db3594c1a424b15f7c726624ec26b3353b10a903a6d0ab1c4c",
            "c3da55379de9c6908e94ea4df28d084f32eccf03491c71f754b4075577a28552",
        ),
        (
            "4b66e9d4d1b4673c5ad22691957d6af5c11b6421e0ea01d42ca4169e7918ba0d",
            "e5210f12786811d3f4b7959d0538ae2c31dbe7106fc03c3efc4cd549c715a493",
            "95cbde9476e8907d7aade45cb4b873f88b595a68799fa152e6f8f7647aac7957",
        ),
    ],
)
def test_rfc7748_vectors(k, u, out):
    assert x25519.x25519(h(k), h(u)).hex() == out


def test_rfc7748_iterated_1000():
    k = u = x25519.BASE_POINT
    for i in range(1000):
        k, u = x25519.x25519(k, u), k
        if i == 0:
            assert k.hex() == "422c8e7a6227d7bca1350b3e2bb7279f7897b87bb6854b783c60e80311ae3079"
    assert k.hex() == "684cf59ba83309552800ef566f2f4d3c1c3887c49360e3875f2eb94d99532c51"


def test_rfc7748_diffie_hellman():
    a = h("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
    b = h("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb")
    a_pub = x25519.public_key(a)
    b_pub = x25519.public_key(b)
    assert a_pub.hex() == "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"
    assert b_pub.hex() == "de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f"
    shared = "4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742"
    assert x25519.x25519(a, b_pub).hex() == shared == x25519.x25519(b, a_pub).hex()


def test_keypair_is_wireguard_style():
    priv, pub = x25519.generate_keypair_b64()
    raw = base64.b64decode(priv)
    assert len(raw) == 32 and len(base64.b64decode(pub)) == 32
    assert raw[0] & 7 == 0 and raw[31] & 0x80 == 0 and raw[31] & 0x40  # clamped
    assert x25519.b64(x25519.public_key(raw)) == pub
    assert len(priv) == 44 and priv.endswith("=")
