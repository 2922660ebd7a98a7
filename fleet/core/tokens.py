"""Bearer tokens and other secrets: generated once, shown once, stored as SHA-256 digests.

Token strings carry a kind prefix so the authenticator knows which table to look in, and so leaked
tokens are recognisable by secret scanners: ``otba_`` agent, ``otbs_`` aggregation server,
``otbu_`` personal API token, ``otbe_`` enrollment token, ``otbi_`` invitation.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from enum import StrEnum


class TokenKind(StrEnum):
    AGENT = "otba"
    SERVER = "otbs"
    USER = "otbu"
    ENROLLMENT = "otbe"
    INVITATION = "otbi"


@dataclass(frozen=True)
class IssuedToken:
    """A freshly generated token: ``value`` is shown once, ``digest`` and ``prefix`` are stored."""

    value: str
    digest: str
    prefix: str


def digest(value: str) -> str:
    return hashlib.sha256(value.encode("utf-8")).hexdigest()


def token_issue(kind: TokenKind) -> IssuedToken:
    value = f"{kind.value}_{secrets.token_urlsafe(32)}"
    return IssuedToken(value=value, digest=digest(value), prefix=value[:12])


def token_kind(value: str) -> TokenKind | None:
    head, sep, _ = value.partition("_")
    if not sep:
        return None
    try:
        return TokenKind(head)
    except ValueError:
        return None


def box_secret_digest(serial: str, secret: str) -> str:
    """Digest of a per-box secret (factory secret, claim code), salted with the serial."""
    return digest(f"{serial}\x00{secret}")


def box_secret_matches(serial: str, secret: str, stored_digest: str) -> bool:
    return bool(stored_digest) and hmac.compare_digest(box_secret_digest(serial, secret), stored_digest)
