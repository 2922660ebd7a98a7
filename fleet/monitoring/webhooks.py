"""Webhook notifications: signing secrets, the signature, URL checks and the HTTP POST.

The receiver verifies ``X-OTB-Signature: sha256=<hex>``, the HMAC-SHA256 of the raw request body
keyed with the target's secret (see docs/alerts-and-commands.md).
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import ipaddress
import secrets
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

from django.conf import settings

from fleet.core.errors import InvalidInput

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
        raise InvalidInput("Give an http:// or https:// URL of at most 500 characters.", field="url")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise InvalidInput(f"This URL is not valid ({exc}).", field="url") from exc
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise InvalidInput("Give a full URL starting with http:// or https://.", field="url")
    if parts.username or parts.password:
        raise InvalidInput(
            "Remove the user name and password from the URL: every request is signed instead.", field="url"
        )
    if port == 0:
        raise InvalidInput("The URL's port is not valid.", field="url")
    if not settings.OTB.get("WEBHOOK_ALLOW_PRIVATE", False) and _obviously_private(parts.hostname):
        raise InvalidInput("The URL must point to a public address, not a private or local one.", field="url")
    return url


def _obviously_private(host: str) -> bool:
    """A host that is a non-global address literal or a local name. Names are checked again, after
    resolving, at every delivery (``_destination_addresses``)."""
    if host == "localhost" or host.endswith((".localhost", ".local", ".internal")):
        return True
    try:
        return not ipaddress.ip_address(host.split("%")[0]).is_global
    except ValueError:
        return False


class _Unreachable(Exception):
    """The destination cannot be resolved, or resolves to an address we do not send to."""


def _destination_addresses(host: str, port: int, allow_private: bool) -> list[tuple[int, str]]:
    """The (family, address) pairs ``host`` resolves to, resolved once: the connection is then made
    to these very addresses, so a DNS answer that changes between the check and the connect (DNS
    rebinding) cannot steer the POST to a private address. Any non-global address refuses the
    whole destination unless ``allow_private``."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    except OSError as exc:
        raise _Unreachable(f"cannot resolve {host}: {exc}") from exc
    addresses: list[tuple[int, str]] = []
    for family, _, _, _, sockaddr in infos:
        address = ipaddress.ip_address(str(sockaddr[0]).split("%")[0])
        if not allow_private and not address.is_global:
            raise _Unreachable("destination address is not public")
        if (family, str(sockaddr[0])) not in addresses:
            addresses.append((family, str(sockaddr[0])))
    if not addresses:
        raise _Unreachable(f"cannot resolve {host}")
    return addresses


def _connect_first(addresses: list[tuple[int, str]], port: int, timeout: float) -> socket.socket:
    """A TCP connection to the first of ``addresses`` that answers."""
    last: OSError | None = None
    for family, address in addresses:
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect((address, port))
        except OSError as exc:
            sock.close()
            last = exc
            continue
        return sock
    raise last or OSError("no address to connect to")


def _pinned_connection(
    scheme: str, host: str, port: int, addresses: list[tuple[int, str]]
) -> http.client.HTTPConnection:
    """An HTTP(S) connection to ``host`` that connects to ``addresses`` only; TLS still verifies the
    certificate against ``host`` (SNI and hostname check), and ``Host`` is ``host``. No proxy from
    the environment and no redirect following: what answers is the destination we checked."""
    connection_class = http.client.HTTPSConnection if scheme == "https" else http.client.HTTPConnection
    connection = connection_class(host, port, timeout=TIMEOUT_S)
    # http.client opens its socket through this attribute (HTTPSConnection then wraps it in TLS
    # for ``host``): the one place to pin the address without re-implementing connect().
    connection._create_connection = lambda *_args, **_kwargs: _connect_first(  # type: ignore[attr-defined]
        addresses, port, TIMEOUT_S
    )
    return connection


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
    host = parts.hostname or ""
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "otb-fleet-webhook/1",
        SIGNATURE_HEADER: webhook_signature(secret, body),
        TIMESTAMP_HEADER: str(timestamp),
        EVENT_HEADER: event,
    }
    try:
        addresses = _destination_addresses(host, port, bool(settings.OTB.get("WEBHOOK_ALLOW_PRIVATE", False)))
    except _Unreachable as exc:
        return WebhookResponse(status=None, error=str(exc)[:500])
    connection = _pinned_connection(parts.scheme, host, port, addresses)
    try:
        connection.request("POST", path, body=body, headers=headers)
        status = connection.getresponse().status
    except (OSError, http.client.HTTPException, ValueError) as exc:
        return WebhookResponse(status=None, error=f"{exc.__class__.__name__}: {exc}"[:500])
    finally:
        connection.close()
    if 200 <= status < 300:
        return WebhookResponse(status=status, error="")
    return WebhookResponse(status=status, error=f"HTTP {status}")
