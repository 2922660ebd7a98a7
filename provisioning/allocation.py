"""The allocation engine behind the provisioning services: server choice, tunnel ports and pool
prefixes. Every function here must run inside the caller's transaction.

Concurrency design (see docs/provisioning.md):

* a server is chosen and locked with ``SELECT ... FOR UPDATE`` (its ``assigned_boxes`` is checked
  against ``capacity`` by a database constraint as the final guard);
* the pools a box draws from are locked with one ``SELECT ... FOR UPDATE`` ordered by pk, so two
  allocations never pick the same index and never deadlock on each other;
* the lowest free index (or port) is found by a gap search in SQL that starts at a hint kept on the
  locked row (every index below the hint is taken), so it costs a couple of index probes, not a scan;
* the unique and exclusion constraints on assignments are the last line of defence.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from uuid import UUID

from django.db import connection
from django.db.models import Case, F, IntegerField, Q, Value, When
from django.utils import timezone

from fleet.errors import Conflict
from fleet.models import Box
from provisioning.addressing import pool_size, prefix_at
from provisioning.choices import AssignmentState, PoolPurpose, ServerStatus
from provisioning.models import AddressAssignment, AddressPool, AggregationServer

# The field name a shortage of each purpose is reported under.
PURPOSE_FIELD = {
    PoolPurpose.PUBLIC_IPV4: "public_ipv4",
    PoolPurpose.TUNNEL_P2P: "tunnel",
    PoolPurpose.IPV6_PREFIX: "ipv6_prefix",
}
ALL_PURPOSES = (PoolPurpose.PUBLIC_IPV4, PoolPurpose.TUNNEL_P2P, PoolPurpose.IPV6_PREFIX)

_INDEX_GAP_SQL = """
SELECT p.pool_id, COALESCE(
    (SELECT p.hint WHERE NOT EXISTS (
        SELECT 1 FROM provisioning_addressassignment a WHERE a.pool_id = p.pool_id AND a."index" = p.hint)),
    (SELECT a."index" + 1 FROM provisioning_addressassignment a
      WHERE a.pool_id = p.pool_id AND a."index" >= p.hint
        AND NOT EXISTS (SELECT 1 FROM provisioning_addressassignment b
                         WHERE b.pool_id = p.pool_id AND b."index" = a."index" + 1)
      ORDER BY a."index" LIMIT 1)
)
FROM unnest(%s::uuid[], %s::bigint[]) AS p(pool_id, hint)
"""

_PORT_TAKE_SQL = """
WITH found AS (SELECT COALESCE(
    (SELECT %(hint)s::integer WHERE NOT EXISTS (
        SELECT 1 FROM fleet_box WHERE server_id = %(server)s AND tunnel_port = %(hint)s)),
    (SELECT b.tunnel_port + 1 FROM fleet_box b
      WHERE b.server_id = %(server)s AND b.tunnel_port >= %(hint)s
        AND NOT EXISTS (SELECT 1 FROM fleet_box c
                         WHERE c.server_id = %(server)s AND c.tunnel_port = b.tunnel_port + 1)
      ORDER BY b.tunnel_port LIMIT 1)
) AS port)
UPDATE provisioning_aggregationserver s
   SET assigned_boxes = s.assigned_boxes + 1, free_port_hint = found.port + 1, updated_at = now()
  FROM found
 WHERE s.id = %(server)s AND found.port <= s.tunnel_port_max
RETURNING found.port
"""


# Inserting the assignments, raising the pool hints and saving the box in one round trip.
_PLACEMENT_SQL = """
WITH inserted AS (
    INSERT INTO provisioning_addressassignment
           (id, pool_id, box_id, purpose, "index", prefix, state, assigned_at)
    SELECT id, pool_id, box_id, purpose, idx, prefix, %s, %s
      FROM unnest(%s::uuid[], %s::uuid[], %s::uuid[], %s::text[], %s::integer[], %s::cidr[])
           AS a(id, pool_id, box_id, purpose, idx, prefix)
    RETURNING pool_id, "index"
), hinted AS (
    UPDATE provisioning_addresspool p SET free_index_hint = inserted."index" + 1
      FROM inserted WHERE p.id = inserted.pool_id
    RETURNING p.id
)
UPDATE fleet_box SET {set_clause} WHERE id = %s
"""


def server_lock_best(
    *, preferred_region_id: UUID | None, exclude_id: UUID | None = None
) -> AggregationServer | None:
    """Lock and return the active server with spare capacity that should take the next box: one in
    the preferred region first, then the one with the most spare slots. None when there is none."""
    servers = AggregationServer.objects.filter(status=ServerStatus.ACTIVE, assigned_boxes__lt=F("capacity"))
    if exclude_id is not None:
        servers = servers.exclude(pk=exclude_id)
    preferred = (
        Case(
            When(region_id=preferred_region_id, then=Value(0)), default=Value(1), output_field=IntegerField()
        )
        if preferred_region_id is not None
        else Value(0)
    )
    return (
        servers.select_for_update(of=("self",))
        .annotate(preferred=preferred, spare=F("capacity") - F("assigned_boxes"))
        .order_by("preferred", "-spare", "pk")
        .first()
    )


def _port_take(server: AggregationServer, hint: int) -> int | None:
    """Find the lowest free port from ``hint`` and take it with the slot, in one statement (the caller
    holds the server row lock). None when the search ran past the end of the port range."""
    with connection.cursor() as cursor:
        cursor.execute(_PORT_TAKE_SQL, {"hint": hint, "server": server.pk})
        row = cursor.fetchone()
    return None if row is None else int(row[0])


def server_slot_take(*, box: Box, server: AggregationServer) -> int:
    """Take a slot and the lowest free tunnel port on a server locked by the caller; sets (does not
    save) ``box.server`` and ``box.tunnel_port``. Raises Conflict when the server is full."""
    if server.assigned_boxes >= server.capacity:
        raise Conflict(
            f"server {server.name} has no spare capacity", field="server", code="no_server_capacity"
        )
    port = _port_take(server, max(server.free_port_hint, server.tunnel_port_min))
    if port is None:
        # The hint ran past the range: search once from the start (ports freed out of order).
        port = _port_take(server, server.tunnel_port_min)
    if port is None:
        raise Conflict(
            f"server {server.name} has no free tunnel port", field="server", code="no_server_capacity"
        )
    server.assigned_boxes += 1
    server.free_port_hint = port + 1
    box.server = server
    box.tunnel_port = port
    return port


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


@dataclass
class _Candidate:
    pool: AddressPool
    size: int


def _candidate_pools(server: AggregationServer, purposes: tuple[str, ...]) -> dict[str, list[_Candidate]]:
    """Lock every pool the server may draw from (server-tied and regional) in pk order and return
    them per purpose, server-tied first."""
    pools = list(
        AddressPool.objects.filter(
            Q(server_id=server.pk) | Q(region_id=server.region_id), purpose__in=purposes
        )
        .order_by("pk")
        .select_for_update(of=("self",))
    )
    pools.sort(key=lambda pool: (pool.server_id is None, pool.name))
    candidates: dict[str, list[_Candidate]] = {purpose: [] for purpose in purposes}
    for pool in pools:
        candidates[pool.purpose].append(_Candidate(pool, pool_size(pool.cidr, pool.prefix_length)))
    return candidates


def _lowest_free(pools_hints: list[tuple[AddressPool, int]]) -> dict[Any, int]:
    with connection.cursor() as cursor:
        cursor.execute(
            _INDEX_GAP_SQL,
            [[str(pool.pk) for pool, _ in pools_hints], [hint for _, hint in pools_hints]],
        )
        return {UUID(str(pool_id)): int(index) for pool_id, index in cursor.fetchall()}


def _exhausted(purpose: str, server: AggregationServer, candidates: list[_Candidate]) -> Conflict:
    field = PURPOSE_FIELD[PoolPurpose(purpose)]
    if candidates:
        names = ", ".join(candidate.pool.name for candidate in candidates)
        message = f"address pool exhausted for {field}: {names} (server {server.name})"
    else:
        message = f"no {field} address pool for server {server.name} or region {server.region.code}"
    return Conflict(message, field=field, code="pool_exhausted")


def addresses_plan(
    *, box: Box, server: AggregationServer, purposes: tuple[str, ...] = ALL_PURPOSES
) -> list[AddressAssignment]:
    """Choose one prefix per purpose for the box from the pools of ``server`` (server-tied pools
    first, then its region's), lowest free index first, and return the unsaved assignments; the pools
    stay locked until the caller's transaction ends, so ``placement_write`` cannot collide. Raises
    Conflict(pool_exhausted) naming the purpose's field and the pools. Two queries in the common case.
    """
    if not purposes:
        return []
    candidates = _candidate_pools(server, purposes)
    chosen: dict[str, tuple[AddressPool, int]] = {}
    pending = {purpose: list(candidates[purpose]) for purpose in purposes}
    retried_from_zero: set[Any] = set()
    while pending:
        for purpose, remaining in pending.items():
            if not remaining:
                raise _exhausted(purpose, server, candidates[purpose])
        heads = [remaining[0].pool for remaining in pending.values()]
        probes = [(pool, 0 if pool.pk in retried_from_zero else pool.free_index_hint) for pool in heads]
        found = _lowest_free(probes)
        for purpose in list(pending):
            candidate = pending[purpose][0]
            index = found[candidate.pool.pk]
            if index < candidate.size:
                chosen[purpose] = (candidate.pool, index)
                del pending[purpose]
            elif candidate.pool.pk not in retried_from_zero and candidate.pool.free_index_hint > 0:
                # A stale hint: search once more from the start before giving up on this pool.
                retried_from_zero.add(candidate.pool.pk)
            else:
                pending[purpose].pop(0)
    return [
        AddressAssignment(
            pool=pool,
            box=box,
            purpose=purpose,
            index=index,
            prefix=prefix_at(pool.cidr, pool.prefix_length, index),
            state=AssignmentState.ACTIVE,
        )
        for purpose, (pool, index) in chosen.items()
    ]


def placement_write(
    *, box: Box, assignments: list[AddressAssignment], box_fields: tuple[str, ...] = ()
) -> None:
    """Insert the planned assignments, raise their pools' hints and save ``box_fields`` of the box, in
    one statement: it runs while the server and pool rows are locked, so round trips are what limit
    claims per second on a busy server."""
    now = timezone.now()
    for assignment in assignments:
        assignment.assigned_at = now
    box.updated_at = now
    fields = [Box._meta.get_field(name) for name in (*box_fields, "updated_at")]
    set_clause = ", ".join(f'"{field.column}" = %s' for field in fields)
    box_values = [field.get_db_prep_save(getattr(box, field.attname), connection) for field in fields]
    columns = [
        [str(a.pk) for a in assignments],
        [str(a.pool_id) for a in assignments],
        [str(a.box_id) for a in assignments],
        [a.purpose for a in assignments],
        [a.index for a in assignments],
        [a.prefix for a in assignments],
    ]
    with connection.cursor() as cursor:
        cursor.execute(
            _PLACEMENT_SQL.format(set_clause=set_clause),
            [AssignmentState.ACTIVE, now, *columns, *box_values, str(box.pk)],
        )


def addresses_allocate(
    *, box: Box, server: AggregationServer, purposes: tuple[str, ...] = ALL_PURPOSES
) -> list[AddressAssignment]:
    """Plan and insert one assignment per purpose (see ``addresses_plan``)."""
    assignments = addresses_plan(box=box, server=server, purposes=purposes)
    placement_write(box=box, assignments=assignments)
    return assignments
