"""The allocation engine behind the provisioning services: server choice, tunnel ports and pool
prefixes. Every function here must run inside the caller's transaction.

Concurrency design (see docs/provisioning.md):

* the server is chosen and locked with ``SELECT ... FOR UPDATE`` (its ``assigned_boxes`` is checked
  against ``capacity`` by a database constraint as the final guard);
* the pools the box draws from are locked with ``SELECT ... FOR UPDATE`` in pk order, so two
  allocations never pick the same index and never deadlock on each other;
* the lowest free index (or port) is found by a gap search in SQL that starts at a hint kept on the
  locked row (every index below the hint is taken), so it costs a couple of index probes, not a scan;
* the unique and exclusion constraints on assignments and ports are the last line of defence.

Those locks are held until commit and every claim on a server waits for them, so the locked part
runs server-side in one call (``provisioning_place_box``, defined in provisioning/sql/placement.sql)
followed by two writes through the ORM (``placement_write``): the time a lock is held does not grow
with the number of pools or purposes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from django.db import connection
from django.db.models import Case, F, IntegerField, Value, When

from fleet.core.errors import Conflict
from fleet.core.models import Box, Region
from provisioning.addressing import prefix_at
from provisioning.choices import AssignmentState, PoolPurpose
from provisioning.models import AddressAssignment, AggregationServer

# The field name a shortage of each purpose is reported under.
PURPOSE_FIELD = {
    PoolPurpose.PUBLIC_IPV4: "public_ipv4",
    PoolPurpose.TUNNEL_P2P: "tunnel",
    PoolPurpose.IPV6_PREFIX: "ipv6_prefix",
}
ALL_PURPOSES = (PoolPurpose.PUBLIC_IPV4, PoolPurpose.TUNNEL_P2P, PoolPurpose.IPV6_PREFIX)


@dataclass
class Placement:
    """Where a box was placed: the locked server (its row as locked), the port, unsaved assignments."""

    server: AggregationServer
    port: int
    assignments: list[AddressAssignment]


def _server_from_row(row: dict[str, Any]) -> AggregationServer:
    fields = AggregationServer._meta.concrete_fields
    server = AggregationServer.from_db(
        connection.alias, [f.attname for f in fields], [row.get(str(f.column)) for f in fields]
    )
    server.id = UUID(str(server.id))
    server.region_id = UUID(str(server.region_id))
    return server


def _conflict(result: dict[str, Any]) -> Conflict:
    error = result["error"]
    server = result.get("server")
    if error == "pool_exhausted":
        field = PURPOSE_FIELD[PoolPurpose(result["purpose"])]
        if result["pools"]:
            names = ", ".join(result["pools"])
            message = f"address pool exhausted for {field}: {names} (server {server})"
        else:
            region = Region.objects.filter(pk=result["region"]).values_list("code", flat=True).first()
            message = f"no {field} address pool for server {server} or region {region}"
        return Conflict(message, field=field, code="pool_exhausted")
    if error == "server_not_active":
        return Conflict(
            f"server {server} is {result.get('status') or 'unknown'}",
            field="server",
            code="server_not_active",
        )
    if error == "no_free_port":
        return Conflict(f"server {server} has no free tunnel port", field="server", code="no_server_capacity")
    if server:
        return Conflict(f"server {server} has no spare capacity", field="server", code="no_server_capacity")
    return Conflict(
        "no active aggregation server has spare capacity", field="server", code="no_server_capacity"
    )


def best_server_id(*, preferred_region_id: UUID | None, exclude_server_id: UUID | None) -> UUID | None:
    """The server the placement policy would choose now (``provisioning_best_server``), not locked."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT provisioning_best_server(%s, %s)", [preferred_region_id, exclude_server_id])
        row = cursor.fetchone()
    return row[0] if row else None


def place(
    *,
    box: Box,
    preferred_region_id: UUID | None = None,
    server_id: UUID | None = None,
    exclude_server_id: UUID | None = None,
    purposes: tuple[str, ...] = ALL_PURPOSES,
) -> Placement:
    """Lock a server (``server_id``, or the best active one with spare capacity: in the preferred
    region first, then most spare slots, never ``exclude_server_id``), take a slot and the lowest free
    tunnel port on it, and choose the lowest free index in a pool for each purpose (server-tied pools
    first, then the region's). Sets, but does not save, ``box.server`` and ``box.tunnel_port``;
    ``placement_write`` saves. Raises Conflict (``no_server_capacity``, ``server_not_active``,
    ``pool_exhausted`` with the purpose's field); the caller's transaction must then roll back.
    One query."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT provisioning_place_box(%s, %s, %s, %s::text[])",
            [preferred_region_id, server_id, exclude_server_id, [str(p) for p in purposes]],
        )
        result = cursor.fetchone()[0]
    if isinstance(result, str):
        result = json.loads(result)
    if "error" in result:
        raise _conflict(result)
    server = _server_from_row(result["server"])
    region = result["region"]
    server.region = Region(id=UUID(str(region["id"])), code=region["code"], name=region["name"])
    server.assigned_boxes += 1
    port = int(result["port"])
    server.free_port_hint = port + 1
    box.server = server
    box.tunnel_port = port
    assignments = [
        AddressAssignment(
            pool_id=UUID(str(chosen["pool"])),
            box=box,
            purpose=chosen["purpose"],
            index=int(chosen["index"]),
            prefix=prefix_at(chosen["cidr"], int(chosen["prefix_length"]), int(chosen["index"])),
            state=AssignmentState.ACTIVE,
        )
        for chosen in result["assignments"]
    ]
    return Placement(server=server, port=port, assignments=assignments)


def placement_write(
    *, box: Box, assignments: list[AddressAssignment], box_fields: tuple[str, ...] = ()
) -> None:
    """Insert the placed assignments and save ``box_fields`` of the box (two statements, while the
    server and pool rows are locked)."""
    AddressAssignment.objects.bulk_create(assignments)
    box.save(update_fields=[*box_fields, "updated_at"])


def server_slot_free(*, box: Box) -> None:
    """Give the box's slot and port back to its server and clear them on the box row (saved)."""
    if box.server_id is None:
        return
    port = box.tunnel_port or 0
    Box.objects.filter(pk=box.pk).update(server=None, tunnel_port=None)
    AggregationServer.objects.filter(pk=box.server_id).update(
        assigned_boxes=F("assigned_boxes") - 1,
        free_port_hint=Case(
            When(free_port_hint__gt=port, then=Value(port)),
            default=F("free_port_hint"),
            output_field=IntegerField(),
        ),
    )
    box.server = None
    box.tunnel_port = None
