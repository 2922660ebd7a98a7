"""Personal API tokens and enrollment tokens: issued once, stored as digests, expiring, revocable.
Each service authorises its actor at its top (``fleet.core.access``)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from fleet.core.access import authorize, authorize_self
from fleet.core.audit import Actor, audit_record
from fleet.core.choices import Role
from fleet.core.errors import Forbidden, InvalidInput
from fleet.core.models import ApiToken, EnrollmentToken, Membership, Organization
from fleet.core.tokens import TokenKind, token_issue

API_TOKEN_MAX_DAYS = 365
ENROLLMENT_TOKEN_MAX_HOURS = 24 * 365


def _name_clean(name: str) -> str:
    name = (name or "").strip() if isinstance(name, str) else ""
    if not 1 <= len(name) <= 100:
        raise InvalidInput("Give the token a name of 1 to 100 characters.", field="name")
    return name


@transaction.atomic
def api_token_create(
    *, actor: Actor, user: Any, organization: Organization, name: str, expires_in_days: int | None = None
) -> tuple[ApiToken, str]:
    """Issue a personal API token acting as ``user`` within ``organization`` (the user must be a
    member). A person issues tokens for themselves (staff and the system for anyone); any role will
    do. Lifetime defaults to OTB["API_TOKEN_DEFAULT_DAYS"], at most 365 days. The value is returned
    once; only its digest is stored."""
    authorize_self(actor, user_id=user.pk, not_found="user not found")
    if not Membership.objects.filter(user=user, organization=organization).exists():
        raise Forbidden(
            "A token acts for a member of the organisation: this person is not one.", field="organization"
        )
    # a person calling with a personal API token issues tokens for that token's organisation only
    authorize(actor, organization_id=organization.pk, minimum=Role.VIEWER)
    name = _name_clean(name)
    days = settings.OTB["API_TOKEN_DEFAULT_DAYS"] if expires_in_days is None else expires_in_days
    if isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= API_TOKEN_MAX_DAYS:
        raise InvalidInput(
            f"Give a whole number of days from 1 to {API_TOKEN_MAX_DAYS}.", field="expires_in_days"
        )
    issued = token_issue(TokenKind.USER)
    token = ApiToken.objects.create(
        user=user,
        organization=organization,
        name=name,
        token_prefix=issued.prefix,
        token_hash=issued.digest,
        expires_at=timezone.now() + timedelta(days=days),
    )
    audit_record(
        actor=actor,
        action="api_token.create",
        organization=organization,
        target=token,
        after={"name": name, "user": user.get_username(), "prefix": issued.prefix, "days": days},
    )
    return token, issued.value


@transaction.atomic
def api_token_revoke(*, actor: Actor, token: ApiToken) -> ApiToken:
    """Revoke a personal API token (its own person, or staff); revoking twice is a no-op."""
    token = ApiToken.objects.select_for_update().get(pk=token.pk)
    authorize_self(actor, user_id=token.user_id, not_found="token not found")
    if token.revoked_at is None:
        token.revoked_at = timezone.now()
        token.save(update_fields=["revoked_at"])
        audit_record(
            actor=actor,
            action="api_token.revoke",
            organization=token.organization,
            target=token,
            before={"name": token.name, "prefix": token.token_prefix},
        )
    return token


@transaction.atomic
def enrollment_token_create(
    *, actor: Actor, organization: Organization, name: str, expires_in_hours: int, single_use: bool
) -> tuple[EnrollmentToken, str]:
    """Issue a token letting boxes enroll straight into ``organization`` (admin or owner). The
    value is returned once; only its digest is stored."""
    authorize(actor, organization_id=organization.pk, minimum=Role.ADMIN)
    name = _name_clean(name)
    if (
        isinstance(expires_in_hours, bool)
        or not isinstance(expires_in_hours, int)
        or not 1 <= expires_in_hours <= ENROLLMENT_TOKEN_MAX_HOURS
    ):
        raise InvalidInput(
            f"Give a whole number of hours from 1 to {ENROLLMENT_TOKEN_MAX_HOURS}.",
            field="expires_in_hours",
        )
    if not isinstance(single_use, bool):
        raise InvalidInput("Give true or false.", field="single_use")
    issued = token_issue(TokenKind.ENROLLMENT)
    token = EnrollmentToken.objects.create(
        organization=organization,
        name=name,
        token_prefix=issued.prefix,
        token_hash=issued.digest,
        created_by=actor.user,
        expires_at=timezone.now() + timedelta(hours=expires_in_hours),
        single_use=single_use,
    )
    audit_record(
        actor=actor,
        action="enrollment_token.create",
        organization=organization,
        target=token,
        after={"name": name, "prefix": issued.prefix, "hours": expires_in_hours, "single_use": single_use},
    )
    return token, issued.value


@transaction.atomic
def enrollment_token_revoke(*, actor: Actor, token: EnrollmentToken) -> EnrollmentToken:
    """Revoke an enrollment token (admin or owner); revoking twice is a no-op."""
    token = EnrollmentToken.objects.select_for_update().get(pk=token.pk)
    authorize(actor, organization_id=token.organization_id, minimum=Role.ADMIN)
    if token.revoked_at is None:
        token.revoked_at = timezone.now()
        token.save(update_fields=["revoked_at"])
        audit_record(
            actor=actor,
            action="enrollment_token.revoke",
            organization=token.organization,
            target=token,
            before={"name": token.name, "prefix": token.token_prefix},
        )
    return token
