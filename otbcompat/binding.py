"""Binding a stock OverTheBox device to a box of ours: the claim (by the device id the box shows, or by
serial + claim code for imported hardware), the box's service confirmation, and the unlink.

A device is *pending* until a claim links it (``OtbDevice.box``, ``linked_at``), *linked* until the
box confirms the service (``confirmed_at``), then *active*. The claim provisions the box through
``provisioning.services.lifecycle`` (the same placement, addresses and credentials as every claim) and
counts failures with the same guard as the serial claim (``fleet.core.throttling.claim_guard``)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from django.db import transaction
from django.utils import timezone

from fleet.core.access import authorize, authorize_staff
from fleet.core.audit import Actor, audit_record
from fleet.core.choices import BoxProtocol, BoxState, Role
from fleet.core.errors import Conflict, InvalidInput
from fleet.core.models import Box, Organization
from fleet.core.throttling import claim_guard
from otbcompat.models import OtbDevice
from otbcompat.services import device_revoke, jwts_revoke, service_name
from provisioning.box_states import box_move
from provisioning.services.lifecycle import box_claim, box_provision

BOX_SERIAL_PREFIX = "OTB-"


@dataclass(frozen=True)
class Claimed:
    """What a claim did: the box, whether this call claimed it, and the device it linked (if any)."""

    box: Box
    newly_claimed: bool
    device: OtbDevice | None


def _device_id_parse(value: Any) -> uuid.UUID | None:
    try:
        return uuid.UUID(str(value))
    except (TypeError, ValueError):
        return None


def _device_link(*, actor: Actor, device: OtbDevice, box: Box) -> None:
    """Link ``device`` (locked) to ``box`` (locked, claimed): any other device linked to the box is
    revoked (a box has one identity: the one its owner named last), the box speaks the OTB protocol."""
    for previous in OtbDevice.objects.select_for_update().filter(box=box).exclude(id=device.id):
        previous.box = None
        previous.linked_at = None
        previous.confirmed_at = None
        previous.save(update_fields=["box", "linked_at", "confirmed_at"])
        device_revoke(previous)
    device.box = box
    device.linked_at = timezone.now()
    device.confirmed_at = None
    device.save(update_fields=["box", "linked_at", "confirmed_at"])
    if box.protocol != BoxProtocol.OTB:
        box.protocol = BoxProtocol.OTB
        box.save(update_fields=["protocol", "updated_at"])
    audit_record(
        actor=actor,
        action="otb.device_link",
        box=box,
        target=box,
        before=None,
        after={"device": str(device.id), "mac": device.mac, "board": device.board},
    )


def _claim_new_box(*, actor: Actor, organization: Organization, box: Box) -> Box:
    """Claim ``box`` (locked, unclaimed) for ``organization`` and provision it, as ``box_claim`` does."""
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
    return box


def _box_for_device(*, actor: Actor, organization: Organization, device: OtbDevice) -> Box:
    """The box a device claim lands on, claimed and provisioned: the organisation's own box with the
    device's MAC (a box it claimed by serial + code, or from an earlier device of that box), an
    unclaimed box made from an earlier device claim, or a new box. Imported hardware (a box with a
    claim code) and another organisation's box are refused: a MAC is not a secret."""
    candidates = list(
        Box.objects.select_for_update(of=("self",))
        .filter(mac=device.mac)
        .exclude(state=BoxState.DECOMMISSIONED)
        .order_by("-claimed_at", "pk")
    )
    own = [box for box in candidates if box.organization_id == organization.pk]
    if own:
        return own[0]
    if any(box.claim_code_hash for box in candidates):
        raise Conflict(
            "this device's MAC is that of imported hardware; claim it with its serial and claim code",
            field="device_id",
            code="imported_hardware",
        )
    if any(box.state == BoxState.CLAIMED for box in candidates):
        raise Conflict(
            "this device's hardware belongs to another organization",
            field="device_id",
            code="already_claimed",
        )
    box = candidates[0] if candidates else None
    if box is None:
        box = Box.objects.create(
            serial=f"{BOX_SERIAL_PREFIX}{device.id}",
            model=device.board[:64],
            mac=device.mac,
            protocol=BoxProtocol.OTB,
        )
    return _claim_new_box(actor=actor, organization=organization, box=box)


@transaction.atomic
def device_claim(*, actor: Actor, organization: Organization, device_id: Any) -> Claimed:
    """Claim the box behind a subscribed OTB device by the device id it shows, provision it, and link
    the device (the box then gets ``askServiceConfirmation``). Needs the admin role in
    ``organization``. An unknown or revoked id is 400, a device linked elsewhere or hardware that is
    not the organisation's to take 409, each counted as a failed claim (per source address and per
    (device id, organisation)); over the limit, RateLimited. Claiming a device the organisation already
    holds changes nothing (``newly_claimed`` false); linking a new device to a box the organisation
    holds is a change (the box's previous device is revoked)."""
    authorize(actor, organization_id=organization.pk, minimum=Role.ADMIN)
    parsed = _device_id_parse(device_id)
    guard_key = f"otb:{parsed or str(device_id)[:64]}"
    with claim_guard(serial=guard_key, organization_id=organization.pk, source_ip=actor.source_ip) as attempt:
        device = (
            OtbDevice.objects.select_for_update(of=("self",)).select_related("box").filter(id=parsed).first()
            if parsed is not None
            else None
        )
        if device is None or device.revoked_at is not None:
            attempt.failed()
            raise InvalidInput("unknown or revoked device id", field="device_id", code="invalid_device_id")
        linked = device.box
        if linked is not None and linked.state == BoxState.CLAIMED:
            if linked.organization_id == organization.pk:
                attempt.succeeded()
                return Claimed(box=linked, newly_claimed=False, device=device)
            attempt.failed()
            raise Conflict(
                "this device is already linked to another organization's box",
                field="device_id",
                code="already_claimed",
            )
        try:
            box = _box_for_device(actor=actor, organization=organization, device=device)
        except Conflict:
            attempt.failed()
            raise
        attempt.succeeded()
    _device_link(actor=actor, device=device, box=box)
    return Claimed(box=box, newly_claimed=True, device=device)


@transaction.atomic
def box_claim_with_device(
    *, actor: Actor, organization: Organization, serial: str, claim_code: str, device_id: Any = None
) -> Claimed:
    """The serial + claim code claim (``provisioning.services.lifecycle.box_claim``), and, when
    ``device_id`` is given, the link of that OverTheBox device to the box: it must be pending or
    already this box's, unrevoked, and subscribed with the box's MAC. A device is never linked by its
    MAC alone: a MAC is not a secret, and anyone could subscribe a device with an imported box's MAC
    before its owner claims it (its tunnel credentials would go to that device). Any refusal undoes
    the claim (nothing half-done)."""
    box = box_claim(actor=actor, organization=organization, serial=serial, claim_code=claim_code)
    changed = bool(getattr(box, "newly_claimed", True))
    if changed:
        # A link left from before the box was unclaimed (its device has not called since) is not
        # carried over to the new claim: the device is pending again and must be linked afresh.
        for stale in OtbDevice.objects.select_for_update().filter(box=box):
            device_unlink(device=stale, revoke=False)
    device = OtbDevice.objects.filter(box=box).first()
    if device_id is None or not str(device_id).strip():
        return Claimed(box=box, newly_claimed=changed, device=device)
    parsed = _device_id_parse(str(device_id).strip())
    candidate = (
        OtbDevice.objects.select_for_update(of=("self",)).filter(id=parsed).first() if parsed else None
    )
    if candidate is None or candidate.revoked_at is not None:
        raise InvalidInput("unknown or revoked device id", field="device_id", code="invalid_device_id")
    if candidate.box_id is not None and candidate.box_id != box.pk:
        raise Conflict(
            "this device is already linked to another box", field="device_id", code="already_claimed"
        )
    if box.mac and candidate.mac != box.mac:
        raise InvalidInput(
            "this device did not subscribe with this box's MAC address: check the device id the box shows",
            field="device_id",
            code="device_mismatch",
        )
    if candidate.box_id != box.pk:
        if device is not None:
            device_unlink(device=device, revoke=True)
        _device_link(actor=actor, device=candidate, box=box)
        changed = True
    return Claimed(box=box, newly_claimed=changed, device=candidate)


def device_unlink(*, device: OtbDevice, revoke: bool) -> None:
    """Unlink ``device`` from its box: it is pending again, and every JWT issued so far stops working
    (``revoke``: its token too, so the box must subscribe again as a new device)."""
    with transaction.atomic():
        OtbDevice.objects.filter(id=device.id).update(box=None, linked_at=None, confirmed_at=None)
        if revoke:
            device_revoke(device)
        else:
            jwts_revoke(device)


def box_device_revoke(*, actor: Actor, box: Box) -> dict[str, Any]:
    """Stop the device linked to ``box`` (locked, in the caller's transaction): its token and every JWT
    stop at once, and it is unlinked. Its next call, poll or renew, is 403 ``Client::Unauthorized``, on
    which the box subscribes again: a new pending device, which the box's owner (or staff) claims again
    by the id it then shows; the claim lands on this box by its MAC (docs/otb-protocol.md,
    "Revocation"). Audited ``otb.device_revoke``. Returns ``{"otb_device": <id>}`` (``None``: the box
    had no device) for the caller's audit entry. Staff only."""
    authorize_staff(actor)
    device = OtbDevice.objects.select_for_update().filter(box=box).first()
    if device is None:
        return {"otb_device": None}
    before = {
        "device": str(device.id),
        "linked_at": device.linked_at.isoformat() if device.linked_at else None,
        "confirmed_at": device.confirmed_at.isoformat() if device.confirmed_at else None,
    }
    device_unlink(device=device, revoke=True)
    audit_record(
        actor=actor,
        action="otb.device_revoke",
        box=box,
        target=box,
        before=before,
        after={"device": str(device.id), "token_revoked": True, "jwts_revoked": True, "linked": False},
    )
    return {"otb_device": str(device.id)}


def service_associated(*, device: OtbDevice) -> str | None:
    """The service the box should store: ``overthebox.<box id>`` once a claim linked it, else None."""
    return service_name(device.box) if device.box is not None else None


def service_confirm(*, device: OtbDevice) -> None:
    """Record the box's confirmation of its service once (the first ``confirmed_at`` stays)."""
    OtbDevice.objects.filter(id=device.id, confirmed_at__isnull=True).update(confirmed_at=timezone.now())
