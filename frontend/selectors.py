"""Reads that only the support console needs (staff see every organisation).

Kept to a fixed number of queries each, like the selectors of the apps they read.
"""

from __future__ import annotations

import ipaddress
from datetime import timedelta
from typing import Any, cast

from django.conf import settings
from django.db.models import Count, F, Q, QuerySet
from django.utils import timezone

from fleet.core.choices import BoxState
from fleet.core.models import Box
from fleet.monitoring.choices import AlertState
from fleet.monitoring.models import Alert
from fleet.telemetry.models import BoxStatus, WanStatus
from provisioning.choices import AssignmentState
from provisioning.models import AddressAssignment, Region
from provisioning.selectors.boxes import boxes_annotated

SEARCH_LIMIT = 50


def console_box_search(*, query: str) -> QuerySet[Box]:
    """Boxes whose serial, MAC, name, public IP or customer (organisation name/slug) matches."""
    query = query.strip()
    condition = (
        Q(serial__icontains=query)
        | Q(name__icontains=query)
        | Q(organization__name__icontains=query)
        | Q(organization__slug__icontains=query)
    )
    mac = query.lower().replace("-", ":")
    if len(mac) >= 4:
        condition |= Q(mac__icontains=mac)
    try:
        address = ipaddress.ip_address(query)
    except ValueError:
        address = None
    if address is not None:
        host_prefix = f"{address}/{address.max_prefixlen}"
        holders = AddressAssignment.objects.filter(state=AssignmentState.ACTIVE, prefix=host_prefix)
        condition |= Q(pk__in=holders.values("box_id"))

        condition |= Q(pk__in=WanStatus.objects.filter(public_ip=str(address)).values("box_id"))
    return (
        boxes_annotated(Box.objects.filter(condition))
        .select_related("status")
        .order_by("serial")[:SEARCH_LIMIT]
    )


def fleet_health() -> dict[str, Any]:
    """Online share, reporting rate and firing alerts across the whole fleet (three queries)."""

    now = timezone.now()
    interval = max(int(cast(int, settings.OTB["TELEMETRY_INTERVAL_S"])), 1)
    counts = Box.objects.aggregate(
        claimed=Count("pk", filter=Q(state=BoxState.CLAIMED)),
        unclaimed=Count("pk", filter=Q(state=BoxState.UNCLAIMED)),
        drifting=Count(
            "pk",
            filter=Q(state=BoxState.CLAIMED) & ~Q(config_hash="") & ~Q(config_hash=F("applied_config_hash")),
        ),
    )
    status = BoxStatus.objects.filter(box__state=BoxState.CLAIMED).aggregate(
        online=Count("pk", filter=Q(online=True)),
        reporting=Count("pk", filter=Q(last_seen_at__gte=now - timedelta(seconds=2 * interval))),
    )
    firing = Alert.objects.filter(state=AlertState.FIRING).count()
    claimed = counts["claimed"] or 0
    return {
        **counts,
        **status,
        "online_share": round(100.0 * status["online"] / claimed, 1) if claimed else 0.0,
        "ingest_per_s": round(status["reporting"] / interval, 1),
        "alerts_firing": firing,
        "telemetry_interval_s": interval,
    }


def boxes_per_region() -> list[dict[str, Any]]:
    """Claimed boxes and online boxes per region, with the region's server capacity (one query)."""
    return [
        dict(row)
        for row in Region.objects.annotate(
            boxes=Count("servers__boxes", distinct=True),
            online=Count("servers__boxes", filter=Q(servers__boxes__status__online=True), distinct=True),
        )
        .order_by("code")
        .values("code", "name", "boxes", "online")
    ]
