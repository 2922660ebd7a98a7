"""Organisations, their members and invitations. Each service authorises its actor at its top
(``fleet.core.access``): creating an organisation is for staff, changing it for its admins, managing
its people for its owners."""

from __future__ import annotations

import zoneinfo
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError as DjangoValidationError
from django.core.mail import send_mail
from django.core.validators import validate_email
from django.db import IntegrityError, transaction
from django.urls import reverse
from django.utils import timezone
from django.utils.text import slugify

from fleet.core.access import authorize, authorize_staff
from fleet.core.audit import Actor, audit_record
from fleet.core.choices import Role
from fleet.core.doorbells import doorbell_reauthorize
from fleet.core.errors import Conflict, Forbidden, InvalidInput, NotFound
from fleet.core.links import public_link
from fleet.core.models import ApiToken, Invitation, Membership, Organization
from fleet.core.tokens import TokenKind, digest, token_issue

INVITATION_LIFETIME = timedelta(days=7)

_UNSET: Any = object()


def _email_normalise(email: str, *, field: str = "email") -> str:
    email = (email or "").strip()
    try:
        validate_email(email)
    except DjangoValidationError as exc:
        raise InvalidInput("Give a valid email address, e.g. jane@example.com.", field=field) from exc
    local, _, domain = email.rpartition("@")
    return f"{local}@{domain.lower()}"


def _role_parse(role: str) -> Role:
    try:
        return Role(role)
    except ValueError as exc:
        raise InvalidInput(f"Choose a role: {', '.join(Role.values)}.", field="role") from exc


def _user_get_or_create(email: str, password: str | None) -> tuple[Any, bool]:
    user_model = get_user_model()
    user = user_model.objects.filter(email__iexact=email).first()
    if user is not None:
        return user, False
    user = user_model(username=email, email=email)
    if password:
        user.set_password(password)
    else:
        user.set_unusable_password()
    user.save()
    return user, True


def _unique_slug(name: str) -> str:
    base = slugify(name)[:100] or "org"
    slug, n = base, 1
    while Organization.objects.filter(slug=slug).exists():
        n += 1
        slug = f"{base}-{n}"
    return slug


@transaction.atomic
def organization_create(
    *, actor: Actor, name: str, owner_email: str, owner_password: str | None = None
) -> Organization:
    """Create an organisation with one owner; the owner's user account is created if missing
    (with the given password, or an unusable one to be set by a reset). Staff only (or the system:
    the ``create_organization`` command)."""
    authorize_staff(actor)
    name = (name or "").strip()
    if not 1 <= len(name) <= 120:
        raise InvalidInput("Give a name of 1 to 120 characters.", field="name")
    email = _email_normalise(owner_email, field="owner_email")
    if Organization.objects.filter(name__iexact=name).exists():
        raise Conflict(f"An organisation named {name!r} already exists: choose another name.", field="name")
    try:
        with transaction.atomic():
            organization = Organization.objects.create(name=name, slug=_unique_slug(name))
    except IntegrityError as exc:
        raise Conflict(
            f"An organisation named {name!r} already exists: choose another name.", field="name"
        ) from exc
    owner, created = _user_get_or_create(email, owner_password)
    Membership.objects.create(user=owner, organization=organization, role=Role.OWNER)
    audit_record(
        actor=actor,
        action="organization.create",
        organization=organization,
        target=organization,
        after={"name": name, "owner": email, "owner_created": created},
    )
    return organization


@transaction.atomic
def organization_update(
    *,
    actor: Actor,
    organization: Organization,
    name: str | None = None,
    preferred_region: Any = _UNSET,
    timezone_name: str | None = None,
) -> Organization:
    """Rename an organisation or change its preferred region / timezone (admin or owner)."""
    authorize(actor, organization_id=organization.pk, minimum=Role.ADMIN)
    organization = Organization.objects.select_for_update().get(pk=organization.pk)
    before = {
        "name": organization.name,
        "preferred_region": str(organization.preferred_region_id or "") or None,
        "timezone": organization.timezone,
    }
    fields: list[str] = []
    if name is not None:
        name = name.strip()
        if not 1 <= len(name) <= 120:
            raise InvalidInput("Give a name of 1 to 120 characters.", field="name")
        if Organization.objects.filter(name__iexact=name).exclude(pk=organization.pk).exists():
            raise Conflict(
                f"An organisation named {name!r} already exists: choose another name.", field="name"
            )
        organization.name = name
        fields.append("name")
    if preferred_region is not _UNSET:
        organization.preferred_region = preferred_region
        fields.append("preferred_region")
    if timezone_name is not None:
        if timezone_name not in zoneinfo.available_timezones():
            raise InvalidInput("Choose a known time zone, e.g. Europe/Paris.", field="timezone")
        organization.timezone = timezone_name
        fields.append("timezone")
    if fields:
        organization.save(update_fields=fields)
        audit_record(
            actor=actor,
            action="organization.update",
            organization=organization,
            target=organization,
            before=before,
            after={
                "name": organization.name,
                "preferred_region": str(organization.preferred_region_id or "") or None,
                "timezone": organization.timezone,
            },
        )
    return organization


def _invitation_mail(invitation: Invitation, token: str) -> None:
    """Mail the invitation after commit. The link carries the token after ``#``: a browser never
    sends that part to a server, so the token stays out of every access log and referrer."""
    organization, role = invitation.organization, Role(invitation.role)
    accept = public_link(reverse("frontend:invitation_accept"))  # on OTB_PUBLIC_URL, never the Host
    body = (
        f"You have been invited to join {organization.name} on otb-fleet as {role.label.lower()}.\n\n"
        f"Open this link to accept, and to create your account if you have none yet "
        f"(valid for 7 days):\n\n{accept}#{token}\n\n"
        f"If the link does not open, go to {accept} and paste this token:\n\n{token}\n"
    )
    email = invitation.email
    transaction.on_commit(
        lambda: send_mail(
            f"Invitation to {organization.name}",
            body,
            settings.DEFAULT_FROM_EMAIL,
            [email],
            fail_silently=True,
        )
    )


def _invitation_pending(invitation: Invitation) -> bool:
    return (
        invitation.accepted_at is None
        and invitation.revoked_at is None
        and invitation.expires_at > timezone.now()
    )


@transaction.atomic
def member_invite(
    *, actor: Actor, organization: Organization, email: str, role: str
) -> tuple[Invitation, str]:
    """Invite an email address to join with a role (owner only). The token is returned once and
    mailed after commit; only its digest is stored. One pending invitation per address: another
    one is refused (re-send the pending one instead)."""
    authorize(actor, organization_id=organization.pk, minimum=Role.OWNER)
    email = _email_normalise(email)
    parsed_role = _role_parse(role)
    if Membership.objects.filter(organization=organization, user__email__iexact=email).exists():
        raise Conflict(
            f"Someone with the address {email} is already a member of {organization.name}.", field="email"
        )
    pending = Invitation.objects.select_for_update().filter(organization=organization, email__iexact=email)
    if any(_invitation_pending(invitation) for invitation in pending):
        raise Conflict(
            f"There is already a pending invitation for {email}: re-send it from the list of invitations.",
            field="email",
        )
    issued = token_issue(TokenKind.INVITATION)
    invitation = Invitation.objects.create(
        organization=organization,
        email=email,
        role=parsed_role,
        token_hash=issued.digest,
        invited_by=actor.user,
        expires_at=timezone.now() + INVITATION_LIFETIME,
    )
    audit_record(
        actor=actor,
        action="member.invite",
        organization=organization,
        target=invitation,
        after={"email": email, "role": parsed_role.value},
    )
    _invitation_mail(invitation, issued.value)
    return invitation, issued.value


def _invitation_locked(invitation: Invitation) -> Invitation:
    locked = Invitation.objects.select_for_update().select_related("organization").get(pk=invitation.pk)
    if not _invitation_pending(locked):
        raise Conflict(
            "This invitation is no longer pending: it was accepted, revoked or has expired.",
            field="invitation",
        )
    return locked


@transaction.atomic
def invitation_revoke(*, actor: Actor, invitation: Invitation) -> Invitation:
    """Withdraw a pending invitation (owner only): its token stops working at once."""
    authorize(actor, organization_id=invitation.organization_id, minimum=Role.OWNER)
    invitation = _invitation_locked(invitation)
    invitation.revoked_at = timezone.now()
    invitation.save(update_fields=["revoked_at"])
    audit_record(
        actor=actor,
        action="member.invite_revoke",
        organization=invitation.organization,
        target=invitation,
        before={"email": invitation.email, "role": invitation.role},
    )
    return invitation


@transaction.atomic
def invitation_resend(*, actor: Actor, invitation: Invitation) -> tuple[Invitation, str]:
    """Send a pending invitation again (owner only) with a new token, valid 7 days from now; the
    token sent before stops working. The new token is returned once."""
    authorize(actor, organization_id=invitation.organization_id, minimum=Role.OWNER)
    invitation = _invitation_locked(invitation)
    issued = token_issue(TokenKind.INVITATION)
    before = {"expires_at": invitation.expires_at.isoformat()}
    invitation.token_hash = issued.digest
    invitation.expires_at = timezone.now() + INVITATION_LIFETIME
    invitation.save(update_fields=["token_hash", "expires_at"])
    audit_record(
        actor=actor,
        action="member.invite_resend",
        organization=invitation.organization,
        target=invitation,
        before=before,
        after={"email": invitation.email, "expires_at": invitation.expires_at.isoformat()},
    )
    _invitation_mail(invitation, issued.value)
    return invitation, issued.value


def _invitation_for_token(token: str) -> Invitation:
    """The pending invitation a token opens, locked; refusals name the ``token`` field."""
    if not isinstance(token, str) or not token or len(token) > 200:
        raise InvalidInput(
            "This is not an invitation token: paste the whole token from the email (it starts with otbi_).",
            field="token",
        )
    invitation = (
        Invitation.objects.select_for_update()
        .select_related("organization")
        .filter(token_hash=digest(token.strip()))
        .first()
    )
    if invitation is None or invitation.revoked_at is not None or invitation.expires_at <= timezone.now():
        raise NotFound(
            "This invitation does not exist or has expired: ask the person who invited you to send it again.",
            field="token",
        )
    if invitation.accepted_at is not None:
        raise Conflict("This invitation was already accepted: sign in to use your account.", field="token")
    return invitation


def _membership_join(user: Any, invitation: Invitation, *, action: str) -> Membership:
    membership = Membership.objects.create(
        user=user, organization=invitation.organization, role=invitation.role
    )
    invitation.accepted_at = timezone.now()
    invitation.accepted_by = user
    invitation.save(update_fields=["accepted_at", "accepted_by"])
    audit_record(
        actor=Actor.for_user(user),
        action=action,
        organization=invitation.organization,
        target=membership,
        after={"email": invitation.email, "role": invitation.role},
    )
    return membership


@transaction.atomic
def invitation_accept(*, user: Any, token: str) -> Membership:
    """Turn a valid invitation addressed to the user's email into a membership; once only."""
    invitation = _invitation_for_token(token)
    if (user.email or "").lower() != invitation.email.lower():
        raise Forbidden(
            f"This invitation is for {invitation.email}, and you are signed in as "
            f"{user.email or user.get_username()}: sign out, then open the invitation again.",
            field="token",
        )
    if Membership.objects.filter(user=user, organization=invitation.organization).exists():
        raise Conflict(f"You are already a member of {invitation.organization.name}.", field="token")
    return _membership_join(user, invitation, action="member.join")


@transaction.atomic
def invitation_sign_up(*, token: str, password: str) -> Membership:
    """Create the account of an invited person who has none (their email address as the username,
    the password they chose) and make them a member, in one transaction. An address that already
    has an account is refused: that person signs in, then accepts. The password must pass the
    site's password rules (``AUTH_PASSWORD_VALIDATORS``); refusals name ``token`` or ``password``."""
    invitation = _invitation_for_token(token)
    user_model = get_user_model()
    email = invitation.email
    if (
        user_model.objects.filter(email__iexact=email).exists()
        or user_model.objects.filter(username__iexact=email).exists()
    ):
        raise Conflict(
            f"There is already an account for {email}: sign in with it, then accept the invitation.",
            field="token",
        )
    user = user_model(username=email, email=email)
    try:
        validate_password(password or "", user=user)
    except DjangoValidationError as exc:
        raise InvalidInput(" ".join(exc.messages), field="password") from exc
    user.set_password(password)
    user.save()
    return _membership_join(user, invitation, action="member.sign_up")


def _owners_locked(organization: Organization) -> list[Membership]:
    # Lock every owner row so two concurrent demotions cannot both see "another owner remains".
    return list(
        Membership.objects.select_for_update()
        .filter(organization=organization, role=Role.OWNER)
        .order_by("pk")
    )


@transaction.atomic
def member_set_role(*, actor: Actor, membership: Membership, role: str) -> Membership:
    """Change a member's role (owner only); the last owner cannot be demoted."""
    organization = membership.organization
    authorize(actor, organization_id=organization.pk, minimum=Role.OWNER)
    parsed_role = _role_parse(role)
    owners = _owners_locked(organization)
    membership = Membership.objects.select_for_update().get(pk=membership.pk)
    before = membership.role
    if before == Role.OWNER and parsed_role != Role.OWNER and len(owners) <= 1:
        raise Conflict(
            "An organisation needs at least one owner: make someone else owner first.", field="role"
        )
    if before != parsed_role:
        membership.role = parsed_role
        membership.save(update_fields=["role"])
        audit_record(
            actor=actor,
            action="member.set_role",
            organization=organization,
            target=membership,
            before={"user": membership.user.get_username(), "role": before},
            after={"user": membership.user.get_username(), "role": parsed_role.value},
        )
    return membership


@transaction.atomic
def member_remove(*, actor: Actor, membership: Membership) -> None:
    """Remove a member (owner only); the last owner cannot be removed. Their API tokens for this
    organisation are revoked with the membership."""
    organization = membership.organization
    authorize(actor, organization_id=organization.pk, minimum=Role.OWNER)
    owners = _owners_locked(organization)
    membership = Membership.objects.select_for_update().select_related("user").get(pk=membership.pk)
    if membership.role == Role.OWNER and len(owners) <= 1:
        raise Conflict("The last owner of an organisation cannot be removed: make someone else owner first.")

    ApiToken.objects.filter(user=membership.user, organization=organization, revoked_at__isnull=True).update(
        revoked_at=timezone.now()
    )
    audit_record(
        actor=actor,
        action="member.remove",
        organization=organization,
        target=membership,
        before={"user": membership.user.get_username(), "role": membership.role},
    )
    membership.delete()
    user_id = membership.user_id
    # the person's open portal sockets drop this organisation's boxes now, not at the next recheck
    transaction.on_commit(lambda: doorbell_reauthorize(user_id))
