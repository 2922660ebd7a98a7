"""Identity of stock OverTheBox boxes: anonymous subscription, JWT renewal, revocation, authentication."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
import time
import uuid
from dataclasses import dataclass
from typing import Any, cast

from django.conf import settings
from django.core.cache import cache
from django.db import transaction
from django.utils import timezone

from fleet.core.choices import BoxState
from fleet.core.errors import InvalidInput
from fleet.core.models import Box
from fleet.core.validators import mac_normalise
from otbcompat.errors import (
    OtbBadRequest,
    OtbForbidden,
    OtbForbiddenResubscribe,
    OtbTooManyRequests,
    OtbUnauthorized,
)
from otbcompat.jwt import JwtExpired, JwtInvalid, jwt_decode, jwt_encode
from otbcompat.models import OtbDevice

BOARD_MAX = 64
SERVICE_PREFIX = "overthebox."


def service_name(box: Box) -> str:
    """The service id an OTB box stores (``overthebox.<uuid>``, the format its register page checks)."""
    return f"{SERVICE_PREFIX}{box.id}"


def device_service_box(device: OtbDevice, service_id: str) -> Box:
    """The box behind ``devices/{id}/service/{sid}/…``: the device must be linked and ``sid`` must be its
    service; anything else is 403 Client::Forbidden (never another box's data)."""
    box = device.box
    if box is None or service_id != service_name(box):
        raise OtbForbidden("this service is not the device's")
    return box


def device_from_path(authorization: str | None, device_id: str, *, expired_grace_s: float = 0) -> OtbDevice:
    """Authenticate the Bearer JWT and check that ``devices/{device_id}/…`` is the device itself
    (``expired_grace_s``: see :func:`device_authenticate`)."""
    device = device_authenticate(authorization, expired_grace_s=expired_grace_s)
    try:
        asked = uuid.UUID(device_id)
    except ValueError as exc:
        raise OtbForbidden("a box may only act as itself") from exc
    if asked != device.id:
        raise OtbForbidden("a box may only act as itself")
    return device


def setting_int(name: str) -> int:
    """One integer of ``settings.OTB``."""
    return int(cast(int, settings.OTB[name]))


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class Subscription:
    device: OtbDevice
    token: str
    jwt: str


def _jwt_issue(device: OtbDevice) -> str:
    now = int(time.time())
    claims = {
        "sub": str(device.id),
        "gen": device.jwt_generation,
        "iat": now,
        "exp": now + setting_int("OTB_COMPAT_JWT_TTL_S"),
    }
    return jwt_encode(claims, settings.OTB_COMPAT_JWT_KEYS)


def _subscribe_rate_check(source_ip: str | None) -> None:
    """At most OTB_COMPAT_SUBSCRIBE_MAX_PER_IP subscriptions per source address per window (Redis)."""
    window = setting_int("OTB_COMPAT_SUBSCRIBE_WINDOW_S")
    key = f"throttle:otbcompat-subscribe:{source_ip or '-'}:{int(time.time()) // window}"
    cache.add(key, 0, timeout=window)
    if cache.incr(key) > setting_int("OTB_COMPAT_SUBSCRIBE_MAX_PER_IP"):
        raise OtbTooManyRequests("too many subscriptions from this address; try again later")


def _private_ips_clean(value: Any) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or len(value) > 16:
        raise OtbBadRequest("private_ips: a list of at most 16 IP addresses")
    cleaned = []
    for item in value:
        try:
            cleaned.append(str(ipaddress.ip_address(item)))
        except (ValueError, TypeError) as exc:
            raise OtbBadRequest(f"private_ips: not an IP address: {item!r}"[:200]) from exc
    return cleaned


def device_subscribe(body: Any, *, source_ip: str | None) -> Subscription:
    """A new pending device for an anonymous box. Never binds to, nor returns, an existing device or box:
    a second subscription with the same MAC is another pending device, which only a claim can link."""
    if not isinstance(body, dict):
        raise OtbBadRequest("the body must be a JSON object with macaddr and board")
    try:
        mac = mac_normalise(body.get("macaddr"), field="macaddr")
    except InvalidInput as exc:
        raise OtbBadRequest(f"macaddr: {exc.message}") from exc
    board = body.get("board")
    if not isinstance(board, str) or not board.strip() or len(board) > BOARD_MAX or not board.isprintable():
        raise OtbBadRequest(f"board: a printable name of 1 to {BOARD_MAX} characters")
    private_ips = _private_ips_clean(body.get("private_ips"))
    _subscribe_rate_check(source_ip)
    token = secrets.token_urlsafe(32)
    with transaction.atomic():
        device = OtbDevice.objects.create(
            id=uuid.uuid4(),
            mac=mac,
            board=board.strip(),
            private_ips=private_ips,
            token_hash=token_digest(token),
            source_ip=source_ip,
        )
    return Subscription(device=device, token=token, jwt=_jwt_issue(device))


def jwt_renew(body: Any) -> str:
    """A fresh JWT for a device proving itself with ``{"id", "token"}``; the Bearer is ignored (the box
    sends its old, possibly expired, JWT). An unknown or revoked device gets 403 so the box re-subscribes."""
    if not isinstance(body, dict):
        raise OtbBadRequest("the body must be a JSON object with id and token")
    device_id, token = body.get("id"), body.get("token")
    if not isinstance(device_id, str) or not isinstance(token, str) or not token:
        raise OtbBadRequest("id and token: strings are required")
    try:
        parsed = uuid.UUID(device_id)
    except ValueError as exc:
        raise OtbForbiddenResubscribe("unknown device") from exc
    device = OtbDevice.objects.filter(id=parsed).first()
    if device is None or not hmac.compare_digest(device.token_hash, token_digest(token)):
        raise OtbForbiddenResubscribe("unknown device or wrong token")
    if device.revoked_at is not None:
        raise OtbForbiddenResubscribe("this device was revoked; subscribe again")
    return _jwt_issue(device)


def device_revoke(device: OtbDevice) -> None:
    """Stop the device's token and every JWT issued to it."""
    OtbDevice.objects.filter(id=device.id).update(revoked_at=timezone.now())


def jwts_revoke(device: OtbDevice) -> None:
    """Invalidate every JWT issued so far (the token still renews)."""
    with transaction.atomic():
        locked = OtbDevice.objects.select_for_update().get(id=device.id)
        locked.jwt_generation += 1
        locked.save(update_fields=["jwt_generation"])


def device_authenticate(authorization: str | None, *, expired_grace_s: float = 0) -> OtbDevice:
    """The device a ``Bearer <jwt>`` header stands for; 401 Client::Unauthorized when the JWT is missing,
    bad, expired or revoked (so the box renews), 403 when the device itself is revoked or gone.

    ``expired_grace_s`` > 0 (the telemetry routes only) also accepts a JWT that expired less than that
    long ago, when it is correctly signed and of the device's current generation: the box's queued
    events and properties precede its first poll after an expiry, and a 401 would drop them."""
    if not authorization or not authorization.startswith("Bearer "):
        raise OtbUnauthorized("a Bearer JWT is required")
    try:
        claims = jwt_decode(
            authorization[7:].strip(), settings.OTB_COMPAT_JWT_KEYS, now=time.time(), leeway=expired_grace_s
        )
    except JwtExpired as exc:
        raise OtbUnauthorized("the JWT has expired; renew it") from exc
    except JwtInvalid as exc:
        raise OtbUnauthorized("invalid JWT") from exc
    try:
        device_id = uuid.UUID(str(claims.get("sub")))
    except ValueError as exc:
        raise OtbUnauthorized("invalid JWT") from exc
    device = OtbDevice.objects.select_related("box").filter(id=device_id).first()
    if device is None or device.revoked_at is not None:
        raise OtbForbiddenResubscribe("this device is unknown or revoked; subscribe again")
    if claims.get("gen") != device.jwt_generation:
        raise OtbUnauthorized("the JWT was revoked; renew it")
    if device.box is not None and device.box.state != BoxState.CLAIMED:
        _link_stale_drop(device)
    return device


def _link_stale_drop(device: OtbDevice) -> None:
    """The device's box was unclaimed or decommissioned (by any path: API, portal, console, admin):
    unlink the device and stop its JWTs (401: it renews and is pending again) or, for a retired box,
    its token too (403: it subscribes again as a new device). Seen on the device's first call after."""
    retired = device.box is not None and device.box.state == BoxState.DECOMMISSIONED
    with transaction.atomic():
        locked = OtbDevice.objects.select_for_update().get(id=device.id)
        locked.box = None
        locked.linked_at = None
        locked.confirmed_at = None
        locked.jwt_generation += 1
        if retired:
            locked.revoked_at = timezone.now()
        locked.save(update_fields=["box", "linked_at", "confirmed_at", "jwt_generation", "revoked_at"])
    if retired:
        raise OtbForbiddenResubscribe("this device's box was decommissioned; subscribe again")
    raise OtbUnauthorized("this device's box was unclaimed; renew the JWT")
