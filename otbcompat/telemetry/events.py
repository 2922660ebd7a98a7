"""``POST devices/{id}/events``: ``{"event_name", "timestamp": <unix>, "details": {…}}``, queued by the
box (``otb_save_event``) for ``boot``, ``start`` and every netifd hotplug action (``ifup``, ``ifdown``,
``ifupdate``…, with ``details: {"interface", "device"}``).

- ``ifup``/``ifdown`` of a WAN link move its state (``links.link_state_report``): ``wan_up`` /
  ``wan_down`` on the timeline when it changes;
- of any other interface (``lan``, ``tun0``…), and every ``ifupdate``: ``iface_up`` / ``iface_down``
  / ``iface_updated``; ``tun0``'s also set the tunnel's state (``BoxStatus.tunnel_up``);
- ``boot`` → ``box_booted``, ``start`` (the daemon started) → ``box_started``;
- any other name is kept as ``box_reported`` with its name and details: never refused.

The event's time is the box's ``timestamp``, unless it cannot be trusted (before 2000, or ahead of
our clock: a box without NTP yet), then the time we received it, as for agent samples.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from django.db import transaction

from fleet.core.choices import EventKind
from fleet.core.events import events_record_batch
from fleet.telemetry.writer import sample_time
from otbcompat.models import OtbDevice
from otbcompat.telemetry import fields
from otbcompat.telemetry.links import TUNNEL, is_wan, link_state_report, tunnel_state_set

logger = logging.getLogger(__name__)

NAME_MAX = 64
DETAILS_MAX_CHARS = 4096
TIMESTAMP_MAX = 253402300799  # 9999-12-31T23:59:59Z, the protocol's bound for sample times

_SIMPLE = {"boot": EventKind.BOX_BOOTED, "start": EventKind.BOX_STARTED}
_IFACE = {"ifup": EventKind.IFACE_UP, "ifdown": EventKind.IFACE_DOWN, "ifupdate": EventKind.IFACE_UPDATED}


def event_report(*, device: OtbDevice, body: Any, received: float | None = None) -> None:
    """Validate one event whole, then record it on the linked box's timeline (and move its link).
    A device linked to no box yet has no timeline: the event is accepted and not kept."""
    received = received if received is not None else time.time()
    event = fields.mapping(body, "body")
    name = fields.text(event.get("event_name"), "event_name", max_len=NAME_MAX, required=True).strip().lower()
    raw_ts = event.get("timestamp")
    stamp = (
        received if raw_ts is None else fields.number(raw_ts, "timestamp", minimum=0, maximum=TIMESTAMP_MAX)
    )
    details = event.get("details")
    details = {} if details is None else fields.mapping(details, "details")
    details = fields.free_form(details, "details", max_chars=DETAILS_MAX_CHARS)
    interface = fields.text(details.get("interface"), "details.interface", max_len=32).strip()
    hw_device = fields.text(details.get("device"), "details.device", max_len=32).strip()
    if name in _IFACE and not interface:
        raise fields.bad("details.interface", f"is required for {name}")
    box = device.box
    if box is None:
        logger.info("otb event %s of unlinked device %s not kept", name, device.pk)
        return
    ts = sample_time(stamp, received)
    base = {"box_id": box.pk, "organization_id": box.organization_id, "ts": ts}
    with transaction.atomic():
        recorded: dict[str, Any] | None
        if name in ("ifup", "ifdown") and is_wan(interface, device.properties.get("wans")):
            recorded = link_state_report(box=box, name=interface, device=hw_device, up=name == "ifup", ts=ts)
        elif name in _IFACE:
            if interface == TUNNEL and name in ("ifup", "ifdown"):
                tunnel_state_set(box=box, up=name == "ifup")
            data = {"iface": interface, "device": hw_device, "source": "otb"}
            recorded = {**base, "kind": _IFACE[name], "data": data}
        elif name in _SIMPLE:
            recorded = {**base, "kind": _SIMPLE[name], "data": {"source": "otb", **_extra(details)}}
        else:
            recorded = {
                **base,
                "kind": EventKind.BOX_REPORTED,
                "data": {"name": name, "source": "otb", "details": details},
            }
        if recorded is not None:
            events_record_batch([recorded])


def _extra(details: dict[str, Any]) -> dict[str, Any]:
    return {"details": details} if details else {}
