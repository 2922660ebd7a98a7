"""Reads of the infrastructure: server capacity and pool utilisation summaries. Every function here
runs a constant number of queries."""

from __future__ import annotations

from typing import Any, cast
from uuid import UUID

from django.db.models import Count, DecimalField, F, Func, Q, QuerySet

from fleet.core.errors import NotFound
from fleet.core.models import Region
from provisioning.choices import AssignmentState, PoolPurpose
from provisioning.models import AddressAssignment, AddressPool, AggregationServer, BoxTunnelStatus

GATEWAY_FIELDS = (
    "last_report_at",
    "gateway_version",
    "load1",
    "cpu_pct",
    "mem_pct",
    "peers",
    "converge_errors",
    "last_error",
    "upstream_rx_bps",
    "upstream_tx_bps",
)


def server_capacity_summary() -> list[dict[str, Any]]:
    """Per server: capacity, assigned boxes, spare slots, status and region, and what its gateway
    last reported (``gateway``: None before its first report) (one query)."""
    rows = AggregationServer.objects.order_by("region__code", "name").values(
        "id",
        "name",
        "region__code",
        "status",
        "capacity",
        "assigned_boxes",
        *(f"gateway_health__{name}" for name in GATEWAY_FIELDS),
    )
    return [
        {
            "id": str(row["id"]),
            "name": row["name"],
            "region": row["region__code"],
            "status": row["status"],
            "capacity": row["capacity"],
            "assigned": row["assigned_boxes"],
            "spare": row["capacity"] - row["assigned_boxes"],
            "gateway": (
                {name: row[f"gateway_health__{name}"] for name in GATEWAY_FIELDS}
                if row["gateway_health__last_report_at"] is not None
                else None
            ),
        }
        for row in rows
    ]


def box_tunnel_status(*, box_id: Any) -> BoxTunnelStatus | None:
    """The box's tunnel as its server's gateway last reported it, with the server (one query)."""
    return BoxTunnelStatus.objects.select_related("server").filter(box_id=box_id).first()


def _usable_prefixes() -> Func:
    """How many prefixes of a pool may be handed out (``provisioning_pool_usable``, the rule allocation
    follows: a public IPv4 pool wider than /31 keeps its network and broadcast addresses)."""
    return Func(
        F("purpose"),
        F("cidr"),
        F("prefix_length"),
        function="provisioning_pool_usable",
        output_field=DecimalField(max_digits=40, decimal_places=0),
    )


def pools_with_utilisation() -> QuerySet[AddressPool]:
    """Pools annotated with ``usable_count`` (prefixes that may be handed out), ``active_count`` and
    ``quarantined_count`` (one query for any number)."""
    return AddressPool.objects.select_related("region", "server").annotate(
        usable_count=_usable_prefixes(),
        active_count=Count("assignments", filter=Q(assignments__state=AssignmentState.ACTIVE)),
        quarantined_count=Count("assignments", filter=Q(assignments__state=AssignmentState.QUARANTINED)),
    )


def pool_utilisation(pool: AddressPool) -> dict[str, int]:
    """size (addresses or prefixes that may be handed out) / active / quarantined / free of a pool
    annotated by ``pools_with_utilisation`` (one query for one that is not)."""
    if getattr(pool, "usable_count", None) is None or getattr(pool, "active_count", None) is None:
        pool = pools_with_utilisation().get(pk=pool.pk)
    size = int(cast(Any, pool).usable_count)
    active, quarantined = int(cast(Any, pool).active_count), int(cast(Any, pool).quarantined_count)
    return {"size": size, "active": active, "quarantined": quarantined, "free": size - active - quarantined}


def _usage(size: int = 0, active: int = 0, quarantined: int = 0) -> dict[str, int]:
    return {"size": size, "active": active, "quarantined": quarantined, "free": size - active - quarantined}


def public_ipv4_usage() -> dict[str, dict[str, dict[str, int]]]:
    """Public IPv4 addresses, the real cap on how many boxes can be served (a box needs one; a server
    takes from its own pools first, then its region's shared pools).

    ``regions``: per region code, the addresses its pools (its own and its servers') may hand out
    (``size``), ``active``, ``quarantined`` and ``free``. ``servers``: per server id, ``in_use``
    (active addresses of its boxes), its own pools' usage (``own_*``) and ``available`` (free in its
    own pools plus free in its region's shared pools). Three queries whatever the number of pools."""
    regions: dict[str, dict[str, int]] = {}
    shared_free: dict[str, int] = {}
    own: dict[str, dict[str, int]] = {}
    pools = pools_with_utilisation().select_related("server__region").filter(purpose=PoolPurpose.PUBLIC_IPV4)
    for pool in pools:
        usage = pool_utilisation(pool)
        region = pool.region or (pool.server.region if pool.server else None)
        if region is None:
            continue
        total = regions.setdefault(region.code, _usage())
        for key in ("size", "active", "quarantined", "free"):
            total[key] += usage[key]
        if pool.server_id is None:
            shared_free[region.code] = shared_free.get(region.code, 0) + usage["free"]
        else:
            mine = own.setdefault(str(pool.server_id), _usage())
            for key in ("size", "active", "quarantined", "free"):
                mine[key] += usage[key]
    in_use = dict(
        AddressAssignment.objects.filter(
            purpose=PoolPurpose.PUBLIC_IPV4, state=AssignmentState.ACTIVE, box__server__isnull=False
        )
        .values_list("box__server_id")
        .annotate(n=Count("pk"))
        .order_by()
    )
    servers: dict[str, dict[str, int]] = {}
    for server_id, region_code in AggregationServer.objects.values_list("id", "region__code"):
        mine = own.get(str(server_id), _usage())
        servers[str(server_id)] = {
            "in_use": in_use.get(server_id, 0),
            **{f"own_{key}": value for key, value in mine.items()},
            "available": mine["free"] + shared_free.get(region_code, 0),
        }
    return {"regions": regions, "servers": servers}


def servers_with_spare() -> QuerySet[AggregationServer]:
    """Servers annotated with ``spare`` (capacity minus assigned boxes)."""
    return AggregationServer.objects.select_related("region").annotate(
        spare=F("capacity") - F("assigned_boxes")
    )


def region_list() -> QuerySet[Region]:
    return Region.objects.order_by("code")


def server_get(*, server_id: Any) -> AggregationServer:
    """One aggregation server; NotFound for an unknown or malformed id."""
    try:
        return AggregationServer.objects.select_related("region").get(pk=UUID(str(server_id)))
    except (AggregationServer.DoesNotExist, ValueError) as exc:
        raise NotFound("server not found") from exc
