"""Webhook notifications: signing secrets, the signature, URL checks and the HTTP POST.

The receiver verifies ``X-OTB-Signature: sha256=<hex>``, the HMAC-SHA256 of the raw request body
keyed with the target's secret (see docs/alerts-and-commands.md).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
import socket
import urllib.error
import urllib.request
from dataclasses import dataclass
from urllib.parse import urlsplit

from django.conf import settings

from fleet.errors import InvalidInput

SIGNATURE_HEADER = "X-OTB-Signature"
TIMESTAMP_HEADER = "X-OTB-Timestamp"
EVENT_HEADER = "X-OTB-Event"
TIMEOUT_S = 10


def webhook_secret_generate() -> str:
    return f"whsec_{secrets.token_urlsafe(32)}"


def webhook_signature(secret: str, body: bytes) -> str:
    """The ``X-OTB-Signature`` header value for ``body``."""
    return "sha256=" + hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


def webhook_signature_valid(secret: str, body: bytes, header: str) -> bool:
    return hmac.compare_digest(webhook_signature(secret, body), header or "")


def webhook_url_validate(url: str) -> str:
    """An absolute http(s) URL with a host and no credentials; raises InvalidInput(field="url")."""
    if not isinstance(url, str) or not url or len(url) > 500:
        raise InvalidInput("url must be an http or https URL of at most 500 characters", field="url")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise InvalidInput(f"url is not valid: {exc}", field="url") from exc
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise InvalidInput("url must be an absolute http or https URL", field="url")
    if parts.username or parts.password:
        raise InvalidInput("url must not carry credentials; the signature authenticates us", field="url")
    if port == 0:
        raise InvalidInput("url port is not valid", field="url")
    return url


def _private_destination(host: str, port: int) -> bool:
    try:
        infos = socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)
    except OSError:
        return False
    for info in infos:
        address = ipaddress.ip_address(info[4][0])
        if not address.is_global:
            return True
    return False


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect is an answer, not an instruction: following it could reach a private address."""

    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


_opener = urllib.request.build_opener(_NoRedirect)


@dataclass(frozen=True)
class WebhookResponse:
    status: int | None
    error: str


def webhook_post(*, url: str, secret: str, event: str, body: bytes, timestamp: int) -> WebhookResponse:
    """POST ``body`` (JSON) signed with ``secret``; a 2xx answer is success. Never raises for
    network errors: they come back as ``error``. Private/loopback destinations are refused unless
    ``OTB["WEBHOOK_ALLOW_PRIVATE"]`` (on outside production) so customers cannot probe our network."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    if not settings.OTB.get("WEBHOOK_ALLOW_PRIVATE", False) and _private_destination(
        parts.hostname or "", port
    ):
        return WebhookResponse(status=None, error="destination address is not public")
    request = urllib.request.Request(  # noqa: S310 - scheme checked by webhook_url_validate
        url,
        data=body,
        method="POST",
        headers={
            "Content-Type": "application/json",
            "User-Agent": "otb-fleet-webhook/1",
            SIGNATURE_HEADER: webhook_signature(secret, body),
            TIMESTAMP_HEADER: str(timestamp),
            EVENT_HEADER: event,
        },
    )
    try:
        with _opener.open(request, timeout=TIMEOUT_S) as response:
            status = response.status
    except urllib.error.HTTPError as exc:
        return WebhookResponse(status=exc.code, error=f"HTTP {exc.code}")
    except (urllib.error.URLError, OSError, ValueError) as exc:
        return WebhookResponse(status=None, error=f"{exc.__class__.__name__}: {exc}"[:500])
    if 200 <= status < 300:
        return WebhookResponse(status=status, error="")
    return WebhookResponse(status=status, error=f"HTTP {status}")
