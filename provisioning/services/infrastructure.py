"""Writes for the infrastructure boxes are placed on: regions, aggregation servers, address pools, and
the release of quarantined addresses. Every public function runs in ``transaction.atomic`` and records
an audit entry in the same transaction; what an actor does here is for support staff only
(``fleet.core.access.authorize_staff``)."""

from __future__ import annotations

import ipaddress
from datetime import datetime
from typing import Any

from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.db.models import Min, Q
from django.utils import timezone

from fleet.core.access import authorize_staff
from fleet.core.audit import Actor, audit_record
from fleet.core.errors import InvalidInput, NotFound
from fleet.core.models import Box, Region
from fleet.core.tokens import TokenKind, token_issue
from provisioning.choices import AssignmentState, PoolPurpose, ServerStatus
from provisioning.models import AddressAssignment, AddressPool, AggregationServer
from provisioning.services.configuration import boxes_config_refresh

QUARANTINE_RELEASE_BATCH = 500

DEFAULT_PREFIX_LENGTH = {
    (PoolPurpose.PUBLIC_IPV4, 4): 32,
    (PoolPurpose.TUNNEL_P2P, 4): 31,
    (PoolPurpose.TUNNEL_P2P, 6): 127,
    (PoolPurpose.IPV6_PREFIX, 6): 56,
}

SERVER_UPDATABLE_FIELDS = (
    "name",
    "hostname",
    "public_ipv4",
    "public_ipv6",
    "tunnel_port_min",
    "tunnel_port_max",
    "capacity",
    "wg_public_key",
    "status",
    "region",
)
# Server fields that appear in its boxes' configuration documents.
SERVER_CONFIG_FIELDS = {"name", "hostname", "public_ipv4", "wg_public_key"}


# --- helpers -------------------------------------------------------------------------------------


def _validated(instance: Any, *, exclude: list[str] | None = None) -> None:
    """Run the model's field and ``clean()`` validation, raising InvalidInput on the first field."""
    try:
        instance.full_clean(exclude=exclude, validate_constraints=False)
    except ValidationError as exc:
        errors = exc.message_dict if hasattr(exc, "error_dict") else {"__all__": exc.messages}
        field, messages = next(iter(errors.items()))
        raise InvalidInput(
            f"{field}: {messages[0]}" if field != "__all__" else messages[0],
            field=None if field == "__all__" else field,
        ) from exc


def _server_state(server: AggregationServer) -> dict[str, Any]:
    return {
        "name": server.name,
        "region": str(server.region_id),
        "hostname": server.hostname,
        "public_ipv4": server.public_ipv4,
        "public_ipv6": server.public_ipv6,
        "tunnel_port_min": server.tunnel_port_min,
        "tunnel_port_max": server.tunnel_port_max,
        "capacity": server.capacity,
        "wg_public_key": server.wg_public_key,
        "status": server.status,
    }


# --- regions, servers, pools ----------------------------------------------------------------------


@transaction.atomic
def region_create(*, actor: Actor, code: str, name: str) -> Region:
    """Create a region; ``code`` is a unique slug."""
    authorize_staff(actor)
    region = Region(code=code, name=name)
    _validated(region)
    region.save()
    audit_record(actor=actor, action="region.create", target=region, after={"code": code, "name": name})
    return region


@transaction.atomic
def region_update(*, actor: Actor, region: Region, name: str) -> Region:
    """Rename a region (its code is its stable identifier and does not change)."""
    authorize_staff(actor)
    region = Region.objects.select_for_update().get(pk=region.pk)
    before = {"name": region.name}
    region.name = name
    _validated(region)
    region.save(update_fields=["name"])
    audit_record(actor=actor, action="region.update", target=region, before=before, after={"name": name})
    return region


@transaction.atomic
def server_create(
    *,
    actor: Actor,
    name: str,
    region: Region,
    hostname: str,
    public_ipv4: str,
    public_ipv6: str | None = None,
    tunnel_port_min: int,
    tunnel_port_max: int,
    capacity: int,
    wg_public_key: str,
    status: str = ServerStatus.ACTIVE,
) -> tuple[AggregationServer, str]:
    """Create an aggregation server and its API token; returns the server and the token (``otbs_...``),
    which is shown this once and stored only as a digest."""
    authorize_staff(actor)
    issued = token_issue(TokenKind.SERVER)
    server = AggregationServer(
        name=name,
        region=region,
        hostname=hostname,
        public_ipv4=public_ipv4,
        public_ipv6=public_ipv6 or None,
        tunnel_port_min=tunnel_port_min,
        tunnel_port_max=tunnel_port_max,
        free_port_hint=tunnel_port_min,
        capacity=capacity,
        wg_public_key=wg_public_key,
        status=status,
        token_prefix=issued.prefix,
        token_hash=issued.digest,
    )
    _validated(server)
    server.save()
    audit_record(actor=actor, action="server.create", target=server, after=_server_state(server))
    return server, issued.value


@transaction.atomic
def server_update(*, actor: Actor, server: AggregationServer, **fields: Any) -> AggregationServer:
    """Change a server's settings. Capacity cannot go below the boxes it holds, the port range must
    keep every port in use, the region cannot change while boxes are assigned. Boxes whose config
    shows a changed field get a new config hash."""
    authorize_staff(actor)
    unknown = set(fields) - set(SERVER_UPDATABLE_FIELDS)
    if unknown:
        field = sorted(unknown)[0]
        raise InvalidInput(f"{field} cannot be changed", field=field)
    server = AggregationServer.objects.select_for_update().get(pk=server.pk)
    before = _server_state(server)
    for field, value in fields.items():
        setattr(server, field, value)
    if str(server.region_id) != before["region"] and server.assigned_boxes:
        raise InvalidInput("the region of a server holding boxes cannot change", field="region")
    if server.capacity < server.assigned_boxes:
        raise InvalidInput(
            f"capacity cannot be below the {server.assigned_boxes} boxes the server holds", field="capacity"
        )
    _validated(server)
    if {"tunnel_port_min", "tunnel_port_max"} & set(fields):
        outside = (
            Box.objects.filter(server=server)
            .filter(Q(tunnel_port__lt=server.tunnel_port_min) | Q(tunnel_port__gt=server.tunnel_port_max))
            .exists()
        )
        if outside:
            raise InvalidInput("boxes use tunnel ports outside this range", field="tunnel_port_min")
        server.free_port_hint = server.tunnel_port_min
    try:
        with transaction.atomic():
            server.save()
    except IntegrityError as exc:
        raise InvalidInput(f"server cannot be saved: {exc.__cause__ or exc}", field="name") from exc
    after = _server_state(server)
    audit_record(actor=actor, action="server.update", target=server, before=before, after=after)
    if any(before[field] != after[field] for field in SERVER_CONFIG_FIELDS):
        boxes_config_refresh(boxes=Box.objects.filter(server=server))
    return server


def server_set_status(*, actor: Actor, server: AggregationServer, status: str) -> AggregationServer:
    """Set a server active, draining (keeps its boxes, takes no new ones) or down."""
    authorize_staff(actor)
    if status not in ServerStatus.values:
        raise InvalidInput(f"status must be one of {', '.join(ServerStatus.values)}", field="status")
    return server_update(actor=actor, server=server, status=status)


@transaction.atomic
def server_rotate_token(*, actor: Actor, server: AggregationServer) -> str:
    """Issue a new server token (returned once); the previous one stops working at commit."""
    authorize_staff(actor)
    issued = token_issue(TokenKind.SERVER)
    updated = AggregationServer.objects.filter(pk=server.pk).update(
        token_prefix=issued.prefix, token_hash=issued.digest, updated_at=timezone.now()
    )
    if not updated:
        raise NotFound("server not found", field="server")
    before = {"token_prefix": server.token_prefix}
    server.token_prefix, server.token_hash = issued.prefix, issued.digest
    audit_record(
        actor=actor,
        action="server.rotate_token",
        target=server,
        before=before,
        after={"token_prefix": issued.prefix},
    )
    return issued.value


def _pool_network(cidr: Any) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        return ipaddress.ip_network(str(cidr).strip(), strict=True)
    except ValueError as exc:
        raise InvalidInput(f"{cidr!r} is not a valid network: {exc}", field="cidr") from exc


def _pool_prefix_length(
    purpose: str, network: ipaddress.IPv4Network | ipaddress.IPv6Network, prefix_length: int | None
) -> int:
    if purpose == PoolPurpose.PUBLIC_IPV4 and network.version != 4:
        raise InvalidInput("a public IPv4 pool must be an IPv4 network", field="cidr")
    if purpose == PoolPurpose.IPV6_PREFIX and network.version != 6:
        raise InvalidInput("a delegated IPv6 prefix pool must be an IPv6 network", field="cidr")
    if prefix_length is None:
        prefix_length = DEFAULT_PREFIX_LENGTH[(PoolPurpose(purpose), network.version)]
    if not network.prefixlen <= prefix_length <= network.max_prefixlen:
        raise InvalidInput(
            f"must be between the pool's /{network.prefixlen} and /{network.max_prefixlen}",
            field="prefix_length",
        )
    if purpose == PoolPurpose.PUBLIC_IPV4 and prefix_length != 32:
        raise InvalidInput("public IPv4 pools hand out single addresses (/32)", field="prefix_length")
    if purpose == PoolPurpose.TUNNEL_P2P and network.max_prefixlen - prefix_length not in (1, 2):
        raise InvalidInput(
            f"tunnel pools hand out /{network.max_prefixlen - 1} or /{network.max_prefixlen - 2} pairs",
            field="prefix_length",
        )
    if purpose == PoolPurpose.IPV6_PREFIX and prefix_length > 64:
        raise InvalidInput("delegated IPv6 prefixes are /64 or shorter", field="prefix_length")
    return prefix_length


@transaction.atomic
def pool_create(
    *,
    actor: Actor,
    name: str,
    cidr: str,
    purpose: str,
    prefix_length: int | None = None,
    region: Region | None = None,
    server: AggregationServer | None = None,
) -> AddressPool:
    """Create an address pool tied to a region or to one server. The network must match the purpose's
    family and must not overlap any other pool (checked here and by an exclusion constraint)."""
    authorize_staff(actor)
    if purpose not in PoolPurpose.values:
        raise InvalidInput(f"purpose must be one of {', '.join(PoolPurpose.values)}", field="purpose")
    network = _pool_network(cidr)
    prefix_length = _pool_prefix_length(purpose, network, prefix_length)
    if (region is None) == (server is None):
        raise InvalidInput("a pool belongs to a region or to a server, exactly one", field="region")
    if AddressPool.objects.filter(name=name).exists():
        raise InvalidInput(f"a pool named {name!r} exists", field="name")
    overlapping = AddressPool.objects.extra(where=["cidr && %s::cidr"], params=[str(network)]).first()
    if overlapping is not None:
        raise InvalidInput(f"overlaps pool {overlapping.name} ({overlapping.cidr})", field="cidr")
    pool = AddressPool(
        name=name,
        cidr=str(network),
        purpose=purpose,
        prefix_length=prefix_length,
        region=region,
        server=server,
    )
    _validated(pool)
    try:
        with transaction.atomic():
            pool.save()
    except IntegrityError as exc:
        # A concurrent insert won the race: the exclusion constraint (or the name) caught it.
        field = "cidr" if "pool_no_overlap" in str(exc) else "name"
        raise InvalidInput(f"{field} conflicts with another pool", field=field) from exc
    audit_record(
        actor=actor,
        action="pool.create",
        target=pool,
        after={
            "name": name,
            "cidr": pool.cidr,
            "purpose": purpose,
            "prefix_length": prefix_length,
            "region": str(region.pk) if region else None,
            "server": str(server.pk) if server else None,
        },
    )
    return pool


@transaction.atomic
def addresses_release_quarantined(
    *, now: datetime | None = None, batch_size: int = QUARANTINE_RELEASE_BATCH
) -> int:
    """Delete up to ``batch_size`` quarantined assignments whose cool-down has passed, making their
    prefixes allocatable again; returns how many were deleted (the task repeats while it is a full
    batch)."""
    now = now or timezone.now()
    ids = list(
        AddressAssignment.objects.filter(state=AssignmentState.QUARANTINED, quarantine_until__lte=now)
        .order_by("quarantine_until")
        .values_list("id", flat=True)[:batch_size]
    )
    if not ids:
        return 0
    lowest = dict(
        AddressAssignment.objects.filter(pk__in=ids)
        .values("pool_id")
        .annotate(lowest=Min("index"))
        .values_list("pool_id", "lowest")
    )
    # Pools are locked in pk order, as allocations lock them, before their hints are lowered.
    pools = list(AddressPool.objects.select_for_update().filter(pk__in=list(lowest)).order_by("pk"))
    deleted, _ = AddressAssignment.objects.filter(pk__in=ids, state=AssignmentState.QUARANTINED).delete()
    for pool in pools:
        if lowest[pool.pk] < pool.free_index_hint:
            AddressPool.objects.filter(pk=pool.pk).update(free_index_hint=lowest[pool.pk])
    return deleted
