"""The WAN links of a stock OverTheBox box in our per-WAN status (``WanStatus``, one row per link).

Which interfaces are WANs: those the box bonds, i.e. whose UCI ``multipath`` is ``on``, ``master``,
``backup`` or ``handover`` in its properties (``lan``, ``loopback``, ``tun0`` and links the owner
switched ``off`` are not). Until the box posted its properties, a name ``wan`` followed by digits (the
box's own naming: ``wan1``, ``wan2``…; not an IPv6 alias such as ``wan1_6``) counts as one. Links are
named by their UCI interface name, as the box's metrics tag them (``uci_name``).

Who moves what: the box's ``ifup``/``ifdown`` events move ``up`` (with ``wan_up``/``wan_down`` on the
timeline, at the event's time); its properties add and remove links and set their label and public IP;
its metrics (through the telemetry writer) set the measurements and leave ``up`` as stored. Every write
here first locks the box's ``telemetry_boxstatus`` row, as the writer does, so they never interleave.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.db import connection
from django.utils import timezone

from fleet.core.choices import EventKind, WanKind
from fleet.core.models import Box
from fleet.telemetry.models import BoxStatus, WanStatus

# The box's own names for its WANs; not their IPv6 aliases (``wan1_6``).
_WAN_NAME = re.compile(r"wan\d*")
TUNNEL = "tun0"
WAN_MULTIPATH = frozenset({"on", "master", "backup", "handover"})
# USB/QMI modems (4G/5G sticks) show up under these device names on OpenWrt.
_LTE_DEVICE_PREFIXES = ("wwan", "wwx", "usb", "qmi")

# The box stamps its events in whole seconds (``date +%s``): an event of the same second as the last
# change is not older than it.
BOX_CLOCK_RESOLUTION = timedelta(seconds=1)

_CREATE_STATUS = "INSERT INTO telemetry_boxstatus (box_id) VALUES (%s) ON CONFLICT (box_id) DO NOTHING"
_LOCK_STATUS = "SELECT 1 FROM telemetry_boxstatus WHERE box_id = %s FOR UPDATE"


def status_lock(box_id: Any) -> None:
    """Lock the box's status row (creating it if needed), in the caller's transaction."""
    with connection.cursor() as cursor:
        cursor.execute(_CREATE_STATUS, [box_id])
        cursor.execute(_LOCK_STATUS, [box_id])


def tunnel_state_set(*, box: Box, up: bool) -> None:
    """The tunnel's state (``BoxStatus.tunnel_up``) as the box's ``tun0`` events and properties say:
    the box's metrics leave it as stored (the writer keeps a ``tunnel_up`` of null as it is), and the
    health of a firmware upgrade reads it. Call inside a transaction."""
    status_lock(box.pk)
    BoxStatus.objects.filter(box_id=box.pk).exclude(tunnel_up=up).update(tunnel_up=up)


def is_wan(name: str, wan_names: list[str] | None) -> bool:
    """Whether the UCI interface ``name`` is a WAN link (``wan_names``: from the box's properties)."""
    if wan_names is not None:
        return name in wan_names
    return _WAN_NAME.fullmatch(name) is not None


def wan_kind(device: str) -> str:
    return WanKind.LTE if device.startswith(_LTE_DEVICE_PREFIXES) else WanKind.OTHER


@dataclass(frozen=True)
class ReportedLink:
    """A WAN as the box's properties describe it."""

    name: str
    label: str
    device: str
    public_ip: str | None
    has_address: bool


def _event(box: Box, link: WanStatus, up: bool, ts: datetime, device: str) -> dict[str, Any]:
    return {
        "box_id": box.pk,
        "organization_id": box.organization_id,
        "kind": EventKind.WAN_UP if up else EventKind.WAN_DOWN,
        "ts": ts,
        "data": {
            "iface": link.iface,
            "label": link.label,
            "kind": link.kind,
            "device": device,
            "source": "otb",
        },
    }


def link_state_report(*, box: Box, name: str, device: str, up: bool, ts: datetime) -> dict[str, Any] | None:
    """An ``ifup``/``ifdown`` of a WAN: the link's new state at ``ts``, and the ``wan_up``/``wan_down``
    event to record (None when nothing changed, or when the event is older than the link's last
    change: a late event never undoes a newer one). Call inside a transaction."""
    status_lock(box.pk)
    now = timezone.now()
    link = WanStatus.objects.filter(box=box, iface=name).first()
    if link is None:
        link = WanStatus.objects.create(
            box=box,
            iface=name,
            label=name,
            kind=wan_kind(device),
            up=up,
            up_changed_at=ts,
            updated_at=now,
        )
        _stamp_all(box, now)
        return _event(box, link, up, ts, device)
    if link.up == up or ts + BOX_CLOCK_RESOLUTION <= link.up_changed_at:
        return None
    link.up = up
    link.up_changed_at = ts
    link.updated_at = now
    fields = ["up", "up_changed_at", "updated_at"]
    if not up and link.degraded_since is not None:
        link.degraded_since = None
        fields.append("degraded_since")
    link.save(update_fields=fields)
    _stamp_all(box, now)
    return _event(box, link, up, ts, device)


def _stamp_all(box: Box, now: datetime) -> None:
    """Every link of the box carries the stamp of its latest report: our selectors list the links of
    the latest report (``box_wans``), and a stock box reports one link per event (its properties say
    which links exist, and remove the others)."""
    WanStatus.objects.filter(box=box).exclude(updated_at=now).update(updated_at=now)


def links_from_properties(*, box: Box, reported: list[ReportedLink]) -> list[dict[str, Any]]:
    """The box's WAN list as its properties give it: new links are added (up when they have an
    address; one reported without is a ``wan_down``, the writer's rule for a new link), known ones get
    their label, kind and public IP, links no longer reported are removed. Returns the events to
    record. Call inside a transaction."""
    status_lock(box.pk)
    now = timezone.now()
    existing = {link.iface: link for link in WanStatus.objects.filter(box=box)}
    events = []
    for item in reported:
        label = item.label or item.name
        kind = wan_kind(item.device)
        link = existing.get(item.name)
        if link is None:
            link = WanStatus.objects.create(
                box=box,
                iface=item.name,
                label=label,
                kind=kind,
                up=item.has_address,
                public_ip=item.public_ip,
                up_changed_at=now,
                updated_at=now,
            )
            if not item.has_address:
                events.append(_event(box, link, False, now, item.device))
            continue
        if (link.label, link.kind, link.public_ip) != (label, kind, item.public_ip):
            link.label, link.kind, link.public_ip, link.updated_at = label, kind, item.public_ip, now
            link.save(update_fields=["label", "kind", "public_ip", "updated_at"])
    gone = set(existing) - {item.name for item in reported}
    if gone:
        WanStatus.objects.filter(box=box, iface__in=gone).delete()
    _stamp_all(box, now)
    return events
