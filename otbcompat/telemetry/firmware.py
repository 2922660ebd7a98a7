"""The firmware version a stock OverTheBox box reports: ``X-Overthebox-Version`` on every call (at most
5 characters: the box sends ``git describe | cut -c 2-6``, so ``1.10.2`` arrives as ``1.10.``) and the
``release.version`` of its properties (the image's full ``git describe``, e.g. ``v1.1.3``). Both land in
``Box.firmware_version`` (what rollouts and targeting read), without the leading ``v``."""

from __future__ import annotations

import re

from django.db import transaction
from django.utils import timezone

from fleet.core.audit import Actor, audit_record
from fleet.core.choices import EventKind
from fleet.core.events import event_record
from fleet.core.models import Box
from fleet.telemetry.models import BoxStatus

VERSION_MAX = 64
_VERSION = re.compile(r"[0-9][0-9A-Za-z.+_~-]*")
# What the box sends when /etc/otb-version is missing (``cat … || echo 0.0-0``): no version.
UNKNOWN = "0.0-0"


def version_clean(raw: object) -> str:
    """``v1.1.3`` → ``1.1.3``; "" for anything that is not a version (it is then ignored)."""
    if not isinstance(raw, str):
        return ""
    value = raw.strip()
    if value[:1] in ("v", "V"):
        value = value[1:]
    value = value.rstrip(".-")
    if not value or value == UNKNOWN or len(value) > VERSION_MAX or not _VERSION.fullmatch(value):
        return ""
    return value


def firmware_header_report(box: Box, header: str | None) -> None:
    """The header of any call: a write only when it names another version than the box's (not when it
    is the 5-character cut of the version the properties gave). Costs nothing when unchanged."""
    version = version_clean(header)
    if version and not box.firmware_version.startswith(version):
        firmware_version_set(box, version)


def firmware_release_report(box: Box, release_version: str) -> None:
    """The ``release.version`` of the box's properties (the image's full version)."""
    version = version_clean(release_version)
    if version and version != box.firmware_version:
        firmware_version_set(box, version)


def firmware_version_set(box: Box, version: str) -> None:
    """Record a newly reported version: ``Box.firmware_version`` (and the live status), audited
    ``box.versions_reported`` with actor ``box:SERIAL``, and a ``firmware_changed`` event when the box
    had a version before (as the agent's hello does)."""
    with transaction.atomic():
        locked = Box.objects.select_for_update().get(pk=box.pk)
        before = locked.firmware_version
        if before == version:
            return
        Box.objects.filter(pk=box.pk).update(firmware_version=version, updated_at=timezone.now())
        BoxStatus.objects.filter(box_id=box.pk).update(firmware_version=version)
        audit_record(
            actor=Actor(label=f"box:{locked.serial}"),
            action="box.versions_reported",
            box=locked,
            target=locked,
            before={"firmware_version": before},
            after={"firmware_version": version},
        )
        if before:
            event_record(
                box_id=box.pk,
                organization_id=locked.organization_id,
                kind=EventKind.FIRMWARE_CHANGED,
                data={"from": before, "to": version},
            )
    box.firmware_version = version
