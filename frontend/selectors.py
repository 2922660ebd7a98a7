"""Reads that only the pages need: the portal's fleet page and organisation pages, and the support
console (staff see every organisation). Reads an API also makes live in the owning app's
``selectors.py``; the page views call one or the other and never query the ORM themselves.

Kept to a fixed number of queries each, like the selectors of the apps they read.
"""

from __future__ import annotations

import ipaddress
from datetime import timedelta
from typing import Any, cast
from uuid import UUID

from django.conf import settings
from django.db.models import Count, Q, QuerySet
from django.http import Http404
from django.utils import timezone

from fleet.core.choices import BoxState
from fleet.core.models import BOX_DRIFTING, Box, Invitation, Organization, Region
from fleet.monitoring.choices import AlertState
from fleet.monitoring.models import Alert
from fleet.telemetry.models import BoxStatus, WanStatus
from provisioning.choices import AssignmentState
from provisioning.models import AddressAssignment
from provisioning.selectors.boxes import box_list, boxes_annotated
from provisioning.selectors.infrastructure import region_list

SEARCH_LIMIT = 50
BOX_CHOICES_LIMIT = 500


def fleet_page_boxes(*, user: Any, filters: dict[str, Any], online: bool | None = None) -> QuerySet[Box]:
    """The fleet page's boxes: ``fleet.core.selectors.box_list`` (annotated, filtered) with their live
    status joined, by serial; ``online`` keeps only the online (True) or offline (False) ones."""
    boxes = box_list(user=user, filters=filters).select_related("status").order_by("serial")
    if online is True:
        boxes = boxes.filter(status__online=True)
    elif online is False:
        boxes = boxes.filter(Q(status__isnull=True) | Q(status__online=False))
    return boxes


def organization_choices() -> list[tuple[str, str]]:
    """Every organisation as (id, name), by name: the customers a rollout may target."""
    return [(str(pk), name) for pk, name in Organization.objects.order_by("name").values_list("pk", "name")]


def organization_get(*, organization_id: Any) -> Organization | None:
    """An organisation by id (None if unknown or malformed): staff may look at any of them."""
    try:
        return Organization.objects.filter(pk=UUID(str(organization_id))).first()
    except ValueError:
        return None


def invitations_pending(*, organization: Organization) -> list[Invitation]:
    """Invitations of the organisation not yet accepted, revoked or expired, newest first."""
    return list(
        Invitation.objects.filter(
            organization=organization,
            accepted_at__isnull=True,
            revoked_at__isnull=True,
            expires_at__gt=timezone.now(),
        ).order_by("-created_at")
    )


def invitation_pending_get(*, organization: Organization, invitation_id: Any) -> Invitation:
    """A pending invitation of the organisation; anything else (another organisation's, accepted,
    revoked, expired, a malformed id) is a 404."""
    try:
        pk = UUID(str(invitation_id))
    except ValueError as exc:
        raise Http404("invitation not found") from exc
    for invitation in invitations_pending(organization=organization):
        if invitation.pk == pk:
            return invitation
    raise Http404("invitation not found")


def box_choices(*, organization: Organization) -> list[tuple[str, str]]:
    """The organisation's boxes as (id, "name (serial)"), by serial: what an alert rule may watch."""
    boxes = (
        Box.objects.filter(organization=organization)
        .order_by("serial")
        .values_list("pk", "serial", "name")[:BOX_CHOICES_LIMIT]
    )
    return [(str(pk), f"{name} ({serial})" if name else serial) for pk, serial, name in boxes]


def region_choices() -> list[tuple[str, str]]:
    """Every region as (code, "code · name"), by code: the fleet page's region filter."""
    return [(region.code, f"{region.code} · {region.name}") for region in region_list()]


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
            filter=Q(state=BoxState.CLAIMED) & BOX_DRIFTING,
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
