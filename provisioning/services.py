"""Writes for provisioning: regions, servers, pools, and the box lifecycle (claim, provision, release,
unclaim, transfer, decommission, reassign). Every public function runs in ``transaction.atomic``,
records an audit entry in the same transaction, and fires outside effects with ``on_commit``."""

from __future__ import annotations

import ipaddress
import time
from datetime import datetime, timedelta
from typing import Any, cast

from django.conf import settings
from django.core.cache import cache
from django.core.exceptions import ValidationError
from django.db import IntegrityError, connection, transaction
from django.db.models import Case, F, IntegerField, Min, Q, Value, When
from django.utils import timezone

from fleet.core.audit import Actor, audit_record
from fleet.core.choices import BoxState
from fleet.core.errors import Conflict, InvalidInput, NotFound, RateLimited
from fleet.core.models import AgentCredential, Box, Organization
from fleet.core.tokens import TokenKind, box_secret_matches, digest, token_issue
from provisioning import allocation
from provisioning.choices import AssignmentState, PoolPurpose, ServerStatus, TunnelKind
from provisioning.models import AddressAssignment, AddressPool, AggregationServer, Region, TunnelCredential
from provisioning.secrets import (
    password_generate,
    secret_encrypt,
    symmetric_key_generate,
    wireguard_key_generate,
)
from provisioning.selectors import (
    box_config_document,
    boxes_config_hashes,
    canonical_hash,
    config_document_build,
)

# Quarantined rows deleted per statement by the release task: bounded so one run never holds many
# row locks or a long transaction.
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


def _box_state(box: Box) -> dict[str, Any]:
    """A box's provisioning state for audit before/after: binding, server, port and addresses."""
    addresses = dict(
        AddressAssignment.objects.filter(box=box, state=AssignmentState.ACTIVE).values_list(
            "purpose", "prefix"
        )
    )
    return {
        "state": box.state,
        "organization": str(box.organization_id) if box.organization_id else None,
        "server": str(box.server_id) if box.server_id else None,
        "tunnel_port": box.tunnel_port,
        "addresses": addresses,
    }


def _doorbell(box_id: Any, config_hash: str) -> None:
    """Tell the live session a box's desired config changed, if the live module provides it."""
    try:
        from fleet.core.doorbells import doorbell_config_changed  # type: ignore[import-not-found]
    except ImportError:
        return
    doorbell_config_changed(box_id, config_hash)


def _config_hash_store(box: Box, config_hash: str) -> str:
    if box.config_hash != config_hash:
        box.config_hash = config_hash
        Box.objects.filter(pk=box.pk).update(config_hash=config_hash, updated_at=timezone.now())
        box_id = box.pk
        transaction.on_commit(lambda: _doorbell(box_id, config_hash))
    return config_hash


def _box_locked(box: Box) -> Box:
    """The box row locked for the rest of the transaction, with fresh values."""
    locked = Box.objects.select_for_update(of=("self",)).filter(pk=box.pk).first()
    if locked is None:
        raise NotFound("box not found", field="box")
    return locked


# --- regions, servers, pools ----------------------------------------------------------------------


@transaction.atomic
def region_create(*, actor: Actor, code: str, name: str) -> Region:
    """Create a region; ``code`` is a unique slug."""
    region = Region(code=code, name=name)
    _validated(region)
    region.save()
    audit_record(actor=actor, action="region.create", target=region, after={"code": code, "name": name})
    return region


@transaction.atomic
def region_update(*, actor: Actor, region: Region, name: str) -> Region:
    """Rename a region (its code is its stable identifier and does not change)."""
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
    if status not in ServerStatus.values:
        raise InvalidInput(f"status must be one of {', '.join(ServerStatus.values)}", field="status")
    return server_update(actor=actor, server=server, status=status)


@transaction.atomic
def server_rotate_token(*, actor: Actor, server: AggregationServer) -> str:
    """Issue a new server token (returned once); the previous one stops working at commit."""
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


# --- provisioning a box ----------------------------------------------------------------------------


# The credentials of a claim in one statement built once (it runs on every claim).
_CREDENTIALS_INSERT_SQL = """
INSERT INTO provisioning_tunnelcredential (id, box_id, kind, public_key, secret_ciphertext, created_at)
SELECT id, %s, kind, public_key, secret_ciphertext, %s
  FROM unnest(%s::uuid[], %s::text[], %s::text[], %s::text[]) AS c(id, kind, public_key, secret_ciphertext)
"""


def _credentials_issue(box: Box) -> list[TunnelCredential]:
    """One live credential per tunnel kind, secrets encrypted; the returned rows also carry the
    plaintext in ``plaintext`` (never stored) so the config hash needs no decryption."""
    plaintexts = {
        TunnelKind.WIREGUARD: wireguard_key_generate(),
        TunnelKind.GLORYTUN: symmetric_key_generate(),
        TunnelKind.SHADOWSOCKS: password_generate(),
    }
    now = timezone.now()
    rows = [
        TunnelCredential(
            box=box,
            kind=kind,
            public_key=box.wg_public_key if kind == TunnelKind.WIREGUARD else "",
            secret_ciphertext=secret_encrypt(secret),
            created_at=now,
        )
        for kind, secret in plaintexts.items()
    ]
    with connection.cursor() as cursor:
        cursor.execute(
            _CREDENTIALS_INSERT_SQL,
            [
                box.pk,
                now,
                [row.pk for row in rows],
                [row.kind for row in rows],
                [row.public_key for row in rows],
                [row.secret_ciphertext for row in rows],
            ],
        )
    for row in rows:
        row.plaintext = plaintexts[TunnelKind(row.kind)]  # type: ignore[attr-defined]
    return rows


def box_provision(*, box: Box, organization: Organization) -> None:
    """Give a box bound to ``organization`` a server slot and tunnel port, a public IPv4, a tunnel
    pair and a delegated IPv6 prefix, and fresh tunnel credentials; store its config hash.

    Must run inside the caller's transaction with the box row locked; the box's binding fields
    (state, organization, claimed_at) are saved from the instance together with the placement.
    Raises Conflict (``no_server_capacity`` / ``pool_exhausted``); the caller's rollback then leaves
    nothing assigned.
    """
    with transaction.atomic(savepoint=False):
        # Everything that does not touch a shared row happens before the server and pools are locked:
        # those locks are held until commit and serialise every claim on the server.
        credentials = _credentials_issue(box)
        placement = allocation.place(box=box, preferred_region_id=organization.preferred_region_id)
        document = config_document_build(
            box=box,
            server=placement.server,
            assignments=placement.assignments,
            credentials=credentials,
            plaintext=True,
        )
        box.config_hash = canonical_hash(document)
        # What ``fleet.core.selectors.boxes_annotated`` would read back: callers answer without a re-read.
        box.public_ipv4 = next(  # type: ignore[attr-defined]
            (a.prefix.split("/")[0] for a in placement.assignments if a.purpose == PoolPurpose.PUBLIC_IPV4),
            None,
        )
        allocation.placement_write(
            box=box,
            assignments=placement.assignments,
            box_fields=("state", "organization", "claimed_at", "server", "tunnel_port", "config_hash"),
        )
        box_id, config_hash = box.pk, box.config_hash
        transaction.on_commit(lambda: _doorbell(box_id, config_hash))


def _otb_int(name: str) -> int:
    """An integer domain setting from ``settings.OTB``."""
    return int(cast(Any, settings.OTB)[name])


def _claim_failure_keys(serial: str, organization: Organization) -> tuple[list[str], int]:
    window = _otb_int("AUTH_FAILURE_WINDOW_S")
    now = int(time.time())
    bucket = now // window
    retry_after = (bucket + 1) * window - now
    keys = [
        f"claim-fail:serial:{digest(serial)[:32]}:{bucket}",
        f"claim-fail:org:{organization.pk}:{bucket}",
    ]
    return keys, max(retry_after, 1)


def _claim_failure_record(keys: list[str]) -> None:
    window = _otb_int("AUTH_FAILURE_WINDOW_S")
    for key in keys:
        cache.add(key, 0, timeout=window)
        try:
            cache.incr(key)
        except ValueError:
            cache.set(key, 1, timeout=window)


# The claimed box, locked (raw: the ORM compiled this select on every claim). The table name comes
# from the model's metadata; the serial is the one parameter.
_BOX_BY_SERIAL_LOCKED_SQL = f"SELECT * FROM {Box._meta.db_table} WHERE serial = %s FOR UPDATE"  # noqa: S608


@transaction.atomic
def box_claim(*, actor: Actor, organization: Organization, serial: str, claim_code: str) -> Box:
    """Bind an unclaimed box to ``organization`` if the claim code matches, and provision it.

    An unknown serial and a wrong code give the same ``invalid_claim_code`` error; failures are
    counted per serial and per organisation, and too many within the window give RateLimited.
    Claiming a box the organisation already holds returns it unchanged.
    """
    keys, retry_after = _claim_failure_keys(serial, organization)
    failures = cache.get_many(keys)
    if any(int(count) >= _otb_int("CLAIM_MAX_FAILURES") for count in failures.values()):
        raise RateLimited("too many failed claim attempts; try again later", retry_after_s=retry_after)
    box = next(iter(Box.objects.raw(_BOX_BY_SERIAL_LOCKED_SQL, [serial])), None)
    if box is None or not box_secret_matches(serial, claim_code, box.claim_code_hash):
        _claim_failure_record(keys)
        raise InvalidInput(
            "unknown serial or wrong claim code", field="claim_code", code="invalid_claim_code"
        )
    if box.state == BoxState.DECOMMISSIONED:
        raise Conflict("this box is decommissioned", field="serial", code="decommissioned")
    if box.state == BoxState.CLAIMED:
        if box.organization_id == organization.pk:
            return box
        raise Conflict("this box is claimed by another organization", field="serial", code="already_claimed")
    box.state = BoxState.CLAIMED
    box.organization = organization
    box.claimed_at = timezone.now()
    audit_record(
        actor=actor,
        action="box.claim",
        organization=organization,
        box=box,
        target=box,
        before={"state": BoxState.UNCLAIMED, "organization": None},
        after={"state": BoxState.CLAIMED, "organization": str(organization.pk)},
    )
    box_provision(box=box, organization=organization)
    return box


# --- releasing ------------------------------------------------------------------------------------


def _addresses_quarantine(box: Box, purposes: tuple[str, ...] | None = None) -> int:
    now = timezone.now()
    assignments = AddressAssignment.objects.filter(box=box, state=AssignmentState.ACTIVE)
    if purposes is not None:
        assignments = assignments.filter(purpose__in=purposes)
    return assignments.update(
        state=AssignmentState.QUARANTINED,
        released_at=now,
        quarantine_until=now + timedelta(seconds=_otb_int("ADDRESS_QUARANTINE_SECONDS")),
    )


def _tunnel_credentials_revoke(box: Box) -> int:
    return TunnelCredential.objects.filter(box=box, revoked_at__isnull=True).update(revoked_at=timezone.now())


def _agent_credentials_revoke(box: Box) -> int:
    return AgentCredential.objects.filter(box=box, revoked_at__isnull=True).update(revoked_at=timezone.now())


def _box_unprovision(box: Box) -> None:
    """Quarantine the box's addresses, revoke its tunnel credentials, free its server slot and port."""
    _addresses_quarantine(box)
    _tunnel_credentials_revoke(box)
    allocation.server_slot_free(box=box)


@transaction.atomic
def box_release_addresses(*, actor: Actor, box: Box) -> Box:
    """Quarantine every active address of the box (kept out of use for the cool-down period); the box
    keeps its server slot and credentials."""
    box = _box_locked(box)
    before = _box_state(box)
    released = _addresses_quarantine(box)
    box_config_refresh(box=box)
    audit_record(
        actor=actor,
        action="box.release_addresses",
        box=box,
        target=box,
        before=before,
        after={**_box_state(box), "released": released},
    )
    return box


@transaction.atomic
def box_revoke_credentials(
    *, actor: Actor, box: Box, include_agent: bool = False, reissue: bool = False
) -> Box:
    """Revoke the box's live tunnel credentials (and its agent credential if ``include_agent``);
    with ``reissue``, a claimed and provisioned box gets fresh tunnel credentials at once."""
    box = _box_locked(box)
    tunnel = _tunnel_credentials_revoke(box)
    agent = _agent_credentials_revoke(box) if include_agent else 0
    if reissue and box.state == BoxState.CLAIMED and box.server_id is not None:
        _credentials_issue(box)
    box_config_refresh(box=box)
    audit_record(
        actor=actor,
        action="box.revoke_credentials",
        box=box,
        target=box,
        before={"tunnel_credentials": tunnel, "agent_credentials": agent},
        after={"tunnel_credentials_revoked": tunnel, "agent_credentials_revoked": agent, "reissued": reissue},
    )
    return box


def _audit_box(
    actor: Actor, action: str, box: Box, organization: Organization | None, before: Any, after: Any
) -> None:
    """Audit a lifecycle change of ``box`` (the box is the target) in the caller's transaction."""
    audit_record(
        actor=actor, action=action, organization=organization, box=box, target=box, before=before, after=after
    )


@transaction.atomic
def box_unclaim(*, actor: Actor, box: Box) -> Box:
    """Unbind a claimed box from its organisation: addresses quarantined, tunnel credentials revoked,
    server slot and port freed. The box stays enrolled (its agent credential lives on)."""
    box = _box_locked(box)
    if box.state != BoxState.CLAIMED:
        raise Conflict("only a claimed box can be unclaimed", field="box", code="not_claimed")
    organization = box.organization
    before = _box_state(box)
    _box_unprovision(box)
    box.state = BoxState.UNCLAIMED
    box.organization = None
    box.claimed_at = None
    box.save(update_fields=["state", "organization", "claimed_at", "updated_at"])
    box_config_refresh(box=box)
    _audit_box(actor, "box.unclaim", box, organization, before, _box_state(box))
    return box


@transaction.atomic
def box_transfer(*, actor: Actor, box: Box, organization: Organization) -> Box:
    """Move a claimed box to another organisation: its addresses, credentials and server slot are
    released and it is provisioned again for the new organisation, all in one transaction."""
    box = _box_locked(box)
    if box.state != BoxState.CLAIMED:
        raise Conflict("only a claimed box can be transferred", field="box", code="not_claimed")
    if box.organization_id == organization.pk:
        raise InvalidInput("the box already belongs to this organization", field="organization")
    previous = box.organization
    before = _box_state(box)
    _box_unprovision(box)
    box.organization = organization
    box.claimed_at = timezone.now()
    box_provision(box=box, organization=organization)
    after = _box_state(box)
    _audit_box(actor, "box.transfer", box, previous, before, after)
    _audit_box(actor, "box.transfer_in", box, organization, before, after)
    return box


@transaction.atomic
def box_decommission(*, actor: Actor, box: Box) -> Box:
    """Retire a box for good: addresses quarantined, tunnel and agent credentials revoked, server slot
    and port freed, organisation unbound. A decommissioned box cannot be claimed again."""
    box = _box_locked(box)
    if box.state == BoxState.DECOMMISSIONED:
        raise Conflict("the box is already decommissioned", field="box", code="decommissioned")
    organization = box.organization
    before = _box_state(box)
    _box_unprovision(box)
    _agent_credentials_revoke(box)
    box.state = BoxState.DECOMMISSIONED
    box.organization = None
    box.decommissioned_at = timezone.now()
    box.save(update_fields=["state", "organization", "decommissioned_at", "updated_at"])
    box_config_refresh(box=box)
    _audit_box(actor, "box.decommission", box, organization, before, _box_state(box))
    return box


def _best_other_server_id(preferred_region_id: Any, exclude_id: Any) -> Any:
    """The server a reassigned box should move to (same order as provisioning; not locked here)."""
    servers = AggregationServer.objects.filter(status=ServerStatus.ACTIVE, assigned_boxes__lt=F("capacity"))
    if exclude_id is not None:
        servers = servers.exclude(pk=exclude_id)
    preferred = Case(
        When(region_id=preferred_region_id, then=Value(0)), default=Value(1), output_field=IntegerField()
    )
    return (
        servers.annotate(preferred=preferred, spare=F("capacity") - F("assigned_boxes"))
        .order_by("preferred", "-spare", "pk")
        .values_list("pk", flat=True)
        .first()
    )


@transaction.atomic
def box_reassign_server(*, actor: Actor, box: Box, server: AggregationServer | None = None) -> Box:
    """Move a claimed box to ``server`` (which must be active with spare capacity) or to the best other
    active server: new slot and port, new tunnel pair and public IPv4 from the new server's pools; the
    IPv6 prefix is kept when the region stays the same. Credentials are kept."""
    box = _box_locked(box)
    if box.state != BoxState.CLAIMED or box.organization is None:
        raise Conflict("only a claimed box can be reassigned", field="box", code="not_claimed")
    old_server_id = box.server_id
    if server is not None:
        if server.pk == old_server_id:
            raise InvalidInput("the box is already on this server", field="server")
        target_id = server.pk
    else:
        target_id = _best_other_server_id(box.organization.preferred_region_id, old_server_id)
        if target_id is None:
            raise Conflict(
                "no other active aggregation server has spare capacity",
                field="server",
                code="no_server_capacity",
            )
    # Both servers are locked in pk order (the old one gives a slot back, the new one takes one).
    ids = sorted(pk for pk in (old_server_id, target_id) if pk is not None)
    locked = {
        s.pk: s for s in AggregationServer.objects.select_for_update().filter(pk__in=ids).order_by("pk")
    }
    target = locked[target_id]
    before = _box_state(box)
    old_region_id = locked[old_server_id].region_id if old_server_id in locked else None
    keep_ipv6 = old_region_id == target.region_id and before["addresses"].get(PoolPurpose.IPV6_PREFIX)
    moving: tuple[str, ...] = (PoolPurpose.PUBLIC_IPV4, PoolPurpose.TUNNEL_P2P)
    if not keep_ipv6:
        moving += (PoolPurpose.IPV6_PREFIX,)
    _addresses_quarantine(box, moving)
    allocation.server_slot_free(box=box)
    placement = allocation.place(box=box, server_id=target.pk, purposes=moving)
    allocation.placement_write(
        box=box, assignments=placement.assignments, box_fields=("server", "tunnel_port")
    )
    if not TunnelCredential.objects.filter(box=box, revoked_at__isnull=True).exists():
        _credentials_issue(box)
    box_config_refresh(box=box)
    audit_record(
        actor=actor, action="box.reassign_server", box=box, target=box, before=before, after=_box_state(box)
    )
    return box


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


# --- configuration ----------------------------------------------------------------------------------


@transaction.atomic
def box_config_refresh(*, box: Box) -> str:
    """Recompute and store the box's config hash; when it changed, ring the live doorbell on commit."""
    return _config_hash_store(box, box_config_document(box=box)["config_hash"])


@transaction.atomic
def boxes_config_refresh(*, boxes: Any) -> int:
    """Recompute the config hash of many boxes (a queryset) in a constant number of queries; returns
    how many changed. Each changed box gets a doorbell on commit."""
    hashes = boxes_config_hashes(boxes=boxes)
    current = dict(Box.objects.filter(pk__in=list(hashes)).values_list("pk", "config_hash"))
    changed = [Box(pk=pk, config_hash=value) for pk, value in hashes.items() if current.get(pk) != value]
    if changed:
        Box.objects.bulk_update(changed, ["config_hash"], batch_size=500)
        rings = [(box.pk, box.config_hash) for box in changed]

        def ring_all() -> None:
            for box_id, value in rings:
                _doorbell(box_id, value)

        transaction.on_commit(ring_all)
    return len(changed)


__all__ = [
    "addresses_release_quarantined",
    "box_claim",
    "box_config_refresh",
    "box_decommission",
    "box_provision",
    "box_reassign_server",
    "box_release_addresses",
    "box_revoke_credentials",
    "box_transfer",
    "box_unclaim",
    "boxes_config_refresh",
    "pool_create",
    "region_create",
    "region_update",
    "server_create",
    "server_rotate_token",
    "server_set_status",
    "server_update",
]
