"""Reads about stock OverTheBox devices for the portal and the console: a box's device and its binding
state, and the devices support staff look through (the pending ones first); the opkg feeds a box's
release channel gets."""

from __future__ import annotations

import contextlib
import json
import logging
import uuid
from typing import Any, cast

from django.conf import settings
from django.db.models import Q, QuerySet

from fleet.core.choices import BoxProtocol, BoxState
from otbcompat.models import OtbDevice

logger = logging.getLogger(__name__)

PENDING, LINKED, ACTIVE, REVOKED = "pending", "linked", "active", "revoked"
STATE_LABELS = {
    PENDING: "Pending: not claimed yet",
    LINKED: "Linked: waiting for the box to confirm its service",
    ACTIVE: "Active",
    REVOKED: "Revoked",
}
CONSOLE_LIMIT = 100


def device_state(device: OtbDevice) -> str:
    """pending (subscribed, no claim), linked (claimed, service not confirmed), active, or revoked. A
    link to a box that is no longer claimed counts as dropped (the device's next call drops it:
    pending after an unclaim, revoked after a decommission)."""
    if device.revoked_at is not None:
        return REVOKED
    box = device.box
    if box is None:
        return PENDING
    if box.state != BoxState.CLAIMED:
        return REVOKED if box.state == BoxState.DECOMMISSIONED else PENDING
    return ACTIVE if device.confirmed_at is not None else LINKED


def box_otb_device(*, box: Any) -> OtbDevice | None:
    """The live device linked to an OTB box (one query; none for an agent box)."""
    if getattr(box, "protocol", None) != BoxProtocol.OTB:
        return None
    return OtbDevice.objects.select_related("box").filter(box_id=box.pk, revoked_at__isnull=True).first()


def devices_for_console(*, query: str = "", state: str = "") -> QuerySet[OtbDevice]:
    """Devices for support staff, newest first, at most ``CONSOLE_LIMIT``: ``state`` pending (the
    default view: subscribed, unclaimed, not revoked) or any other state; ``query`` matches the device
    id (whole), or a part of the MAC or board."""
    devices = OtbDevice.objects.select_related("box", "box__organization").order_by("-created_at")
    live = Q(revoked_at__isnull=True)
    linked = Q(box__state=BoxState.CLAIMED)
    if state == PENDING:
        devices = devices.filter(
            live & (Q(box__isnull=True) | ~Q(box__state__in=[BoxState.CLAIMED, BoxState.DECOMMISSIONED]))
        )
    elif state == LINKED:
        devices = devices.filter(live & linked, confirmed_at__isnull=True)
    elif state == ACTIVE:
        devices = devices.filter(live & linked, confirmed_at__isnull=False)
    elif state == REVOKED:
        devices = devices.filter(Q(revoked_at__isnull=False) | Q(box__state=BoxState.DECOMMISSIONED))
    text = query.strip()
    if text:
        condition = Q(mac__icontains=text.lower()) | Q(board__icontains=text)
        with contextlib.suppress(ValueError):  # a whole device id also matches exactly
            condition |= Q(id=uuid.UUID(text))
        devices = devices.filter(condition)
    return devices[:CONSOLE_LIMIT]


def otb_release_feeds(*, box: Any) -> list[dict[str, str]]:
    """``OTB_COMPAT_RELEASE_FEEDS`` for the box's release channel, as ``{"type", "name", "url"}``.
    The v1.x ``otb-action-updateReleaseChannel`` writes each one to /etc/opkg/distfeeds.conf as
    ``type name url`` (jq ``[.type,.name,.url] | join(" ")``, then ``@ARCH@``/``@BOARD@`` replaced):
    the ``src/gz <name> <url>`` line opkg reads. A broken setting gives no feeds (logged)."""
    try:
        configured = json.loads(
            str(cast(dict[str, Any], settings.OTB).get("OTB_COMPAT_RELEASE_FEEDS") or "{}")
        )
        feeds = configured.get(box.release_channel) or []
        return [{"type": "src/gz", "name": str(name), "url": str(address)} for name, address in feeds]
    except (ValueError, TypeError, AttributeError):
        logger.error("OTB_COMPAT_RELEASE_FEEDS is not {channel: [[name, url], ...]}")
        return []
