"""The box lifecycle, in one place: inventory import, agent enrollment, claim (binding to an organisation
and provisioning: server slot, tunnel port, addresses, tunnel credentials), release of addresses,
revocation of credentials, unclaim, transfer, decommission and reassignment to another server.

Every public function runs in ``transaction.atomic``, authorises its actor at its top
(``fleet.core.access``: admin of the box's organisation for what customers do, staff for the rest),
checks the box's state transition with ``provisioning.lifecycle`` (the one table of legal moves),
records an audit entry in the same transaction, and fires outside effects with ``on_commit``."""

from __future__ import annotations

from datetime import timedelta
from typing import Any, cast
from uuid import UUID

from django.conf import settings
from django.db import transaction
from django.db.models import Case, IntegerField, Value, When
from django.utils import timezone

from fleet.core.access import authorize, authorize_staff
from fleet.core.audit import Actor, audit_record
from fleet.core.choices import BoxState, EventKind, Role
from fleet.core.errors import Conflict, InvalidInput, NotFound
from fleet.core.events import event_record
from fleet.core.models import AgentCredential, Box, Organization
from fleet.core.throttling import claim_guard
from fleet.core.tokens import box_secret_matches
from provisioning import allocation
from provisioning.addressing import host_address
from provisioning.box_states import box_move
from provisioning.choices import AssignmentState, PoolPurpose, TunnelKind
from provisioning.models import AddressAssignment, AggregationServer, TunnelCredential
from provisioning.secrets import (
    password_generate,
    secret_encrypt,
    symmetric_key_generate,
    wireguard_key_generate,
)
from provisioning.selectors.configuration import canonical_hash, config_document_build
from provisioning.services.configuration import box_config_refresh, config_changed_on_commit
from provisioning.signals import box_device_credentials_revoked


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


def _box_locked(box: Box) -> Box:
    """The box row locked for the rest of the transaction, with fresh values."""
    locked = Box.objects.select_for_update(of=("self",)).filter(pk=box.pk).first()
    if locked is None:
        raise NotFound("box not found", field="box")
    return locked


# --- provisioning a box ----------------------------------------------------------------------------


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
    TunnelCredential.objects.bulk_create(rows)
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
        # What ``boxes_annotated`` (provisioning.selectors.boxes) would read back: no re-read.
        box.public_ipv4 = next(  # type: ignore[attr-defined]
            (a.prefix.split("/")[0] for a in placement.assignments if a.purpose == PoolPurpose.PUBLIC_IPV4),
            None,
        )
        allocation.placement_write(
            box=box,
            assignments=placement.assignments,
            box_fields=("state", "organization", "claimed_at", "server", "tunnel_port", "config_hash"),
        )
        config_changed_on_commit([(box.pk, box.config_hash)])


def _otb_int(name: str) -> int:
    """An integer domain setting from ``settings.OTB``."""
    return int(cast(Any, settings.OTB)[name])


def _box_by_typed_serial(serial: str) -> Box | None:
    """The box a person's typed serial names, locked: the box with exactly that serial, otherwise the
    one box whose serial matches ignoring case (serials are printed in capitals and typed as they
    come). None when no box matches, or several do and none exactly (ambiguous: never guessed).
    Served by the ``box_serial_upper_idx`` index."""
    exact_first = Case(When(serial=serial, then=Value(0)), default=Value(1), output_field=IntegerField())
    candidates = list(
        Box.objects.select_for_update(of=("self",))
        .filter(serial__iexact=serial)
        .order_by(exact_first, "pk")[:2]
    )
    if candidates and (len(candidates) == 1 or candidates[0].serial == serial):
        return candidates[0]
    return None


@transaction.atomic
def box_claim(*, actor: Actor, organization: Organization, serial: str, claim_code: str) -> Box:
    """Bind an unclaimed box to ``organization`` if the claim code matches, and provision it.

    Needs the admin role in ``organization`` (checked before the code, so a refused caller neither
    learns about serials nor counts as a failure). The serial is matched ignoring case. An unknown
    serial and a wrong code give the same ``invalid_claim_code`` error. Failures are counted
    (``fleet.core.throttling.claim_guard``) per source address and per (serial, organisation) in a
    sliding window; over either limit the attempt is refused with RateLimited before the code is
    checked. Another organisation's failures never refuse this one's right code.

    Claiming a box the organisation already holds changes nothing and returns it; the returned box's
    ``newly_claimed`` says whether this call claimed it.
    """
    authorize(actor, organization_id=organization.pk, minimum=Role.ADMIN)
    with claim_guard(serial=serial, organization_id=organization.pk, source_ip=actor.source_ip) as attempt:
        box = _box_by_typed_serial(serial)
        if box is None or not box_secret_matches(box.serial, claim_code, box.claim_code_hash):
            attempt.failed()
            raise InvalidInput(
                "The serial number or the claim code is wrong: check both on the box's label.",
                field="claim_code",
                code="invalid_claim_code",
            )
        attempt.succeeded()
    if box.state == BoxState.CLAIMED and box.organization_id == organization.pk:
        box.newly_claimed = False  # type: ignore[attr-defined]
        return box
    box.state = box_move(box.state, "claim")
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
    box.newly_claimed = True  # type: ignore[attr-defined]
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
    keeps its server slot and credentials. Staff only."""
    authorize_staff(actor)
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
    """Revoke the box's live tunnel credentials and, with ``include_agent``, the credentials the box
    itself proves who it is with: its agent credential, and through ``box_device_credentials_revoked``
    those the apps above keep (a stock OverTheBox device's token and JWTs, ``otbcompat``), all in this
    transaction. With ``reissue``, a claimed and provisioned box gets fresh tunnel credentials at once.
    Staff only. What was revoked is in the audit entry and on the returned box
    (``credentials_revoked``: ``tunnel_credentials``, ``agent_credentials`` counts, each receiver's
    own keys, e.g. ``otb_device``, and whether new tunnel credentials were ``reissued``)."""
    authorize_staff(actor)
    box = _box_locked(box)
    tunnel = _tunnel_credentials_revoke(box)
    agent = _agent_credentials_revoke(box) if include_agent else 0
    others: dict[str, Any] = {}
    if include_agent:
        for _, answer in box_device_credentials_revoked.send(sender=Box, box=box, actor=actor):
            others.update(cast(dict[str, Any], answer) or {})
    reissued = reissue and box.state == BoxState.CLAIMED and box.server_id is not None
    if reissued:
        _credentials_issue(box)
    box_config_refresh(box=box)
    revoked = {"tunnel_credentials": tunnel, "agent_credentials": agent, **others, "reissued": reissued}
    audit_record(
        actor=actor,
        action="box.revoke_credentials",
        box=box,
        target=box,
        before={"tunnel_credentials": tunnel, "agent_credentials": agent},
        after={
            "tunnel_credentials_revoked": tunnel,
            "agent_credentials_revoked": agent,
            **{f"{name}_revoked": value for name, value in others.items()},
            "reissued": reissue,
        },
    )
    box.credentials_revoked = revoked  # type: ignore[attr-defined]
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
    server slot and port freed. The box stays enrolled (its agent credential lives on). Needs the
    admin role in the box's organisation."""
    box = _box_locked(box)
    authorize(actor, organization_id=box.organization_id, minimum=Role.ADMIN)
    state = box_move(box.state, "unclaim")
    organization = box.organization
    before = _box_state(box)
    _box_unprovision(box)
    box.state = state
    box.organization = None
    box.claimed_at = None
    box.save(update_fields=["state", "organization", "claimed_at", "updated_at"])
    box_config_refresh(box=box)
    _audit_box(actor, "box.unclaim", box, organization, before, _box_state(box))
    return box


@transaction.atomic
def box_transfer(*, actor: Actor, box: Box, organization: Organization | UUID) -> Box:
    """Move a claimed box to another organisation (given as a row or by id): its addresses,
    credentials and server slot are released and it is provisioned again for the new organisation,
    all in one transaction. Needs the owner role in the box's organisation, then the admin role in
    the target, in that order: whether a target exists is told (NotFound) only to those who may give
    the box away, and an unknown target and one the actor is not in look the same."""
    box = _box_locked(box)
    authorize(actor, organization_id=box.organization_id, minimum=Role.OWNER)
    if not isinstance(organization, Organization):
        target = Organization.objects.filter(pk=organization).first()
        if target is None:
            raise NotFound("organization not found")
        organization = target
    authorize(actor, organization_id=organization.pk, minimum=Role.ADMIN)
    box_move(box.state, "transfer")
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
    and port freed, organisation unbound. A decommissioned box cannot be claimed again. Staff only."""
    authorize_staff(actor)
    box = _box_locked(box)
    state = box_move(box.state, "decommission")
    organization = box.organization
    before = _box_state(box)
    _box_unprovision(box)
    _agent_credentials_revoke(box)
    box.state = state
    box.organization = None
    box.decommissioned_at = timezone.now()
    box.save(update_fields=["state", "organization", "decommissioned_at", "updated_at"])
    box_config_refresh(box=box)
    _audit_box(actor, "box.decommission", box, organization, before, _box_state(box))
    return box


@transaction.atomic
def box_reassign_server(*, actor: Actor, box: Box, server: AggregationServer | None = None) -> Box:
    """Move a claimed box to ``server`` (which must be active with spare capacity) or to the best other
    active server: new slot and port, new tunnel pair and public IPv4 from the new server's pools; the
    IPv6 prefix is kept when the region stays the same. Credentials are kept. Staff only.

    The customer's public IPv4 changes: a ``public_ip_changed`` event goes on the box's timeline (with
    the old and new addresses, the server and region), and its organisation is notified after commit
    (``fleet.core.events.NOTIFIED_KINDS``)."""
    authorize_staff(actor)
    box = _box_locked(box)
    box_move(box.state, "reassign_server")
    organization = cast(Organization, box.organization)  # a claimed box has one (database constraint)
    old_server_id = box.server_id
    target_id: UUID | None
    if server is not None:
        if server.pk == old_server_id:
            raise InvalidInput("the box is already on this server", field="server")
        target_id = server.pk
    else:
        target_id = allocation.best_server_id(
            preferred_region_id=organization.preferred_region_id, exclude_server_id=old_server_id
        )
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
    after = _box_state(box)
    audit_record(actor=actor, action="box.reassign_server", box=box, target=box, before=before, after=after)
    old_ip = _host(before["addresses"].get(PoolPurpose.PUBLIC_IPV4))
    new_ip = _host(after["addresses"].get(PoolPurpose.PUBLIC_IPV4))
    if old_ip != new_ip:
        event_record(
            box_id=box.pk,
            organization_id=organization.pk,
            kind=EventKind.PUBLIC_IP_CHANGED,
            data={
                "old_public_ipv4": old_ip,
                "new_public_ipv4": new_ip,
                "server": target.name,
                "region": placement.server.region.code,
                "ipv6_prefix_changed": before["addresses"].get(PoolPurpose.IPV6_PREFIX)
                != after["addresses"].get(PoolPurpose.IPV6_PREFIX),
                "reason": "reassigned",
            },
        )
    return box


def _host(prefix: str | None) -> str | None:
    """The address of a single-address prefix, or None."""
    return host_address(prefix) if prefix else None
