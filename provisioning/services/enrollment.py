"""Enrollment: an agent proves who it is (the factory secret of an imported box, or an organisation's
enrollment token, which creates, claims and provisions an unknown serial) and receives its agent
credential, the one live credential of the box."""

from __future__ import annotations

from django.db import IntegrityError, transaction
from django.utils import timezone

from fleet.core.audit import Actor, audit_record
from fleet.core.choices import BoxState
from fleet.core.errors import Conflict, Forbidden, InvalidInput, NotAuthenticated
from fleet.core.models import AgentCredential, Box, EnrollmentToken
from fleet.core.throttling import enroll_guard
from fleet.core.tokens import TokenKind, box_secret_matches, digest, token_issue, token_kind
from fleet.core.validators import (
    SECRET_MAX,
    mac_normalise,
    serial_clean,
    short_text_clean,
    wg_public_key_clean,
)
from provisioning.box_states import box_move
from provisioning.choices import TunnelKind
from provisioning.models import TunnelCredential
from provisioning.services.configuration import box_config_refresh
from provisioning.services.lifecycle import box_provision


def _credential_rotate(box: Box) -> tuple[str, int]:
    """Revoke the box's live agent credential (if any) and issue a new one; returns (value, revoked)."""
    revoked = AgentCredential.objects.filter(box=box, revoked_at__isnull=True).update(
        revoked_at=timezone.now()
    )
    issued = token_issue(TokenKind.AGENT)
    AgentCredential.objects.create(box=box, token_hash=issued.digest)
    return issued.value, revoked


def _wireguard_key_store(box: Box, wg_public_key: str | None) -> bool:
    """Store a (new) WireGuard key on the box and on its live tunnel credential; True if changed."""
    if not wg_public_key or wg_public_key == box.wg_public_key:
        return False
    box.wg_public_key = wg_public_key
    TunnelCredential.objects.filter(box=box, kind=TunnelKind.WIREGUARD, revoked_at__isnull=True).update(
        public_key=wg_public_key
    )
    return True


def _enroll_factory(box: Box | None, serial: str, factory_secret: str) -> Box:
    if box is None or not box_secret_matches(serial, factory_secret, box.factory_secret_hash):
        raise NotAuthenticated("unknown serial or wrong factory secret", code="enroll_failed")
    box_move(box.state, "enroll")
    return box


def _enroll_token(box: Box | None, serial: str, token_value: str, *, model: str, mac: str) -> Box:
    if token_kind(token_value) != TokenKind.ENROLLMENT or len(token_value) > 200:
        raise NotAuthenticated("invalid, expired or revoked enrollment token", code="enroll_failed")
    token = (
        EnrollmentToken.objects.select_for_update()
        .select_related("organization")
        .filter(token_hash=digest(token_value))
        .first()
    )
    now = timezone.now()
    if (
        token is None
        or token.revoked_at is not None
        or token.expires_at <= now
        or (token.single_use and token.uses > 0)
    ):
        raise NotAuthenticated("invalid, expired, used or revoked enrollment token", code="enroll_failed")
    organization = token.organization
    if box is None:
        try:
            with transaction.atomic():
                box = Box.objects.create(
                    serial=serial,
                    model=model,
                    mac=mac,
                    state=BoxState.CLAIMED,
                    organization=organization,
                    claimed_at=now,
                )
        except IntegrityError as exc:
            raise Conflict("this serial is being enrolled concurrently; retry", field="serial") from exc
        box = Box.objects.select_for_update().get(pk=box.pk)
        box_provision(box=box, organization=organization)
        box.refresh_from_db()
    elif box.organization_id != organization.pk:
        # Unclaimed inventory is claimed with its claim code, never by serial alone.
        raise Forbidden("this serial is registered to another owner", field="serial", code="serial_taken")
    token.uses += 1
    token.save(update_fields=["uses"])
    return box


@transaction.atomic
def _enroll_write(
    *,
    serial: str,
    factory_secret: str | None,
    enrollment_token: str | None,
    wg_key: str | None,
    model: str,
    mac: str,
    agent_version: str,
    source_ip: str | None,
) -> tuple[Box, str]:
    """The enrollment itself, once its input is clean and its limits allow it: check the secret or
    token (NotAuthenticated), rotate the agent credential, store what the agent told, audit."""
    box = Box.objects.select_for_update().filter(serial=serial).first()
    if factory_secret is not None:
        box = _enroll_factory(box, serial, factory_secret)
        method = "factory_secret"
    else:
        box = _enroll_token(box, serial, enrollment_token or "", model=model, mac=mac)
        method = "enrollment_token"
    token, revoked = _credential_rotate(box)
    fields = ["enrolled_at", "updated_at"]
    box.enrolled_at = timezone.now()
    if _wireguard_key_store(box, wg_key):
        fields.append("wg_public_key")
    if agent_version:
        box.agent_version = agent_version
        fields.append("agent_version")
    if model and not box.model:
        box.model = model
        fields.append("model")
    if mac and not box.mac:
        box.mac = mac
        fields.append("mac")
    box.save(update_fields=fields)
    audit_record(
        actor=Actor(label=f"box:{serial}", source_ip=source_ip),
        action="box.enroll",
        box=box,
        target=box,
        after={
            "method": method,
            "revoked_credentials": revoked,
            "wg_public_key": box.wg_public_key or None,
            "agent_version": box.agent_version or None,
        },
    )
    box_config_refresh(box=box)
    return box, token


def box_enroll(
    *,
    serial: str,
    factory_secret: str | None = None,
    enrollment_token: str | None = None,
    wg_public_key: str | None = None,
    model: str | None = None,
    mac: str | None = None,
    agent_version: str | None = None,
    source_ip: str | None,
) -> tuple[Box, str]:
    """Give an agent its credential. Either with the factory secret of an imported box, or with an
    organisation's enrollment token (an unknown serial is then created, claimed and provisioned in
    that organisation). Any previous agent credential of the box is revoked: one live per box.

    Failed attempts are counted per serial and per source IP; over the limit, RateLimited is raised
    before the secret is even checked. Returns the box and the agent token (shown once).
    """
    serial = serial_clean(serial)
    if (factory_secret is None) == (enrollment_token is None):
        raise InvalidInput("give exactly one of factory_secret or enrollment_token", field="factory_secret")
    if factory_secret is not None and (
        not isinstance(factory_secret, str) or len(factory_secret) > SECRET_MAX
    ):
        raise InvalidInput(f"must be at most {SECRET_MAX} characters", field="factory_secret")
    if enrollment_token is not None and not isinstance(enrollment_token, str):
        raise InvalidInput("must be a string", field="enrollment_token")
    wg_key = wg_public_key_clean(wg_public_key) if wg_public_key else None
    mac_clean = mac_normalise(mac) if mac else ""
    model_clean = short_text_clean(model, field="model") if model else ""
    agent_version_clean = short_text_clean(agent_version, field="agent_version") if agent_version else ""

    with enroll_guard(serial=serial, source_ip=source_ip) as attempt:
        try:
            box, token = _enroll_write(
                serial=serial,
                factory_secret=factory_secret,
                enrollment_token=enrollment_token,
                wg_key=wg_key,
                model=model_clean,
                mac=mac_clean,
                agent_version=agent_version_clean,
                source_ip=source_ip,
            )
        except NotAuthenticated:
            attempt.failed()
            raise
        attempt.succeeded()
    return box, token
