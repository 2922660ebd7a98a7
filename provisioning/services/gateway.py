"""What a server's gateway (``otb-gateway``) reports: its health and each box's tunnel as it sees it.

A report replaces the server's ``GatewayHealth`` and the ``BoxTunnelStatus`` rows of the boxes it
lists; rates come from the previous report's counters. The gateway's WireGuard public key becomes the
server's when it differs (audited), and the boxes on the server get a new configuration hash, since
their configuration carries it. Everything runs in one transaction, in a constant number of queries.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.db import transaction
from django.utils import timezone

from fleet.core.audit import Actor, audit_record
from fleet.core.errors import InvalidInput
from fleet.core.models import Box
from fleet.core.validators import wg_public_key_clean
from provisioning.models import AggregationServer, BoxTunnelStatus, GatewayHealth
from provisioning.services.configuration import boxes_config_refresh

# Reports closer together than this give no rate (the counters' difference would be mostly noise).
RATE_MIN_INTERVAL_S = 1.0
LAST_ERROR_MAX_LENGTH = 1000


@dataclass(frozen=True)
class ReportOutcome:
    boxes: int  # tunnel rows written
    ignored: int  # boxes listed that are not on this server (moved or gone since the gateway polled)
    wg_public_key_updated: bool


def _rate_bps(current: int | None, previous: int | None, seconds: float | None) -> int | None:
    """Bits per second between two cumulative byte counters; None when it cannot be known."""
    if current is None or previous is None or seconds is None or seconds < RATE_MIN_INTERVAL_S:
        return None
    if current < previous:  # the counter restarted (gateway or box pieces made again)
        return None
    return int((current - previous) * 8 / seconds)


def _seconds_since(then: datetime | None, now: datetime) -> float | None:
    return (now - then).total_seconds() if then is not None else None


def _box_ids(boxes: list[dict[str, Any]]) -> list[uuid.UUID]:
    ids: list[uuid.UUID] = []
    seen: set[uuid.UUID] = set()
    for index, row in enumerate(boxes):
        box_id = uuid.UUID(str(row["box_id"]))
        if box_id in seen:
            raise InvalidInput("this box is listed twice", field=f"boxes[{index}].box_id")
        seen.add(box_id)
        ids.append(box_id)
    return ids


@transaction.atomic
def server_report_record(
    *, server: AggregationServer, report: dict[str, Any], now: datetime | None = None
) -> ReportOutcome:
    """Store a gateway's report (already shaped by the endpoint's serializer). Boxes not on this
    server are ignored; this server's boxes the report leaves out lose their tunnel row. A report
    without ``boxes`` (a gateway that has no peers document yet) updates the health only."""
    now = now or timezone.now()
    has_boxes = report.get("boxes") is not None
    box_ids = _box_ids(report["boxes"]) if has_boxes else []
    wg_key = report.get("wg_public_key") or ""
    if wg_key:
        wg_public_key_clean(wg_key)
    # Reports of one server are serialised on its health row, so each computes its rates from the
    # one before it (the server row itself is left to claims, which lock it).
    health, created = GatewayHealth.objects.select_for_update().get_or_create(
        server_id=server.pk,
        defaults={
            "last_report_at": now,
            "gateway_version": "",
            "uptime_s": 0,
            "peers": 0,
            "converge_errors": 0,
        },
    )
    elapsed = None if created else _seconds_since(health.last_report_at, now)
    upstream = report.get("upstream") or {}
    rx, tx = upstream.get("rx_bytes"), upstream.get("tx_bytes")
    same_iface = health.upstream_iface == upstream.get("name", "")
    health.upstream_rx_bps = _rate_bps(rx, health.upstream_rx_bytes if same_iface else None, elapsed)
    health.upstream_tx_bps = _rate_bps(tx, health.upstream_tx_bytes if same_iface else None, elapsed)
    health.upstream_iface = upstream.get("name", "")
    health.upstream_rx_bytes, health.upstream_tx_bytes = rx, tx
    health.last_report_at = now
    health.gateway_version = report["gateway_version"]
    health.uptime_s = report["uptime_s"]
    health.load1, health.cpu_pct, health.mem_pct = (
        report.get("load1"),
        report.get("cpu_pct"),
        report.get("mem_pct"),
    )
    health.peers = report["peers"]
    health.converge_errors = report["converge_errors"]
    health.last_error = (report.get("last_error") or "")[:LAST_ERROR_MAX_LENGTH]
    health.save()

    key_updated = _adopt_wg_key(server=server, wg_key=wg_key, now=now)
    if not has_boxes:
        return ReportOutcome(boxes=0, ignored=0, wg_public_key_updated=key_updated)
    on_server = set(Box.objects.filter(pk__in=box_ids, server=server).values_list("pk", flat=True))
    previous = {row.box_id: row for row in BoxTunnelStatus.objects.filter(box_id__in=on_server)}
    rows = []
    for box_id, entry in zip(box_ids, report["boxes"], strict=True):
        if box_id not in on_server:
            continue
        before = previous.get(box_id)
        # A box that moved here starts its rates afresh: the other server's counters are not ours.
        since = _seconds_since(before.reported_at, now) if before and before.server_id == server.pk else None
        rows.append(
            BoxTunnelStatus(
                box_id=box_id,
                server_id=server.pk,
                reported_at=now,
                rx_bytes=entry["rx_bytes"],
                tx_bytes=entry["tx_bytes"],
                rx_bps=_rate_bps(entry["rx_bytes"], before.rx_bytes if before else None, since),
                tx_bps=_rate_bps(entry["tx_bytes"], before.tx_bytes if before else None, since),
                connections=entry["connections"],
                handshake_age_s=entry.get("handshake_age_s"),
            )
        )
    if rows:
        BoxTunnelStatus.objects.bulk_create(
            rows,
            update_conflicts=True,
            unique_fields=["box"],
            update_fields=[
                "server",
                "reported_at",
                "rx_bytes",
                "tx_bytes",
                "rx_bps",
                "tx_bps",
                "connections",
                "handshake_age_s",
            ],
        )
    BoxTunnelStatus.objects.filter(server=server).exclude(box_id__in=on_server).delete()
    return ReportOutcome(boxes=len(rows), ignored=len(box_ids) - len(rows), wg_public_key_updated=key_updated)


def _adopt_wg_key(*, server: AggregationServer, wg_key: str, now: datetime) -> bool:
    """The gateway's WireGuard public key becomes the server's when it differs (audited); the boxes
    on the server get a new config hash, their configuration carrying it. True if it changed."""
    if not wg_key or wg_key == server.wg_public_key:
        return False
    before_key = server.wg_public_key
    AggregationServer.objects.filter(pk=server.pk).update(wg_public_key=wg_key, updated_at=now)
    server.wg_public_key = wg_key
    audit_record(
        actor=Actor(label=f"server:{server.name}"),
        action="server.wg_public_key",
        target=server,
        before={"wg_public_key": before_key},
        after={"wg_public_key": wg_key},
    )
    boxes_config_refresh(boxes=Box.objects.filter(server=server))
    return True
