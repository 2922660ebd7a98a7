"""Reads of the fleet app, scoped to what the caller may see (``fleet.core.access``).

Every list here runs a fixed number of queries whatever its length: related rows are joined
(``select_related``). Box lists (with their server, region and public address) are
``provisioning.selectors.boxes``.
"""

from __future__ import annotations

from typing import Any

from django.db.models import Q, QuerySet
from django.utils import timezone

from fleet.core.access import ROLE_RANK, is_staff, visible_organization_ids
from fleet.core.choices import Role
from fleet.core.errors import NotFound
from fleet.core.models import ApiToken, AuditLog, Box, EnrollmentToken, Membership, Organization
from fleet.core.permissions import is_person


def organizations_visible(*, user: Any, auth: Any = None) -> QuerySet[Organization]:
    org_ids = visible_organization_ids(user, auth)
    queryset = Organization.objects.select_related("preferred_region")
    return queryset if org_ids is None else queryset.filter(pk__in=org_ids)


def memberships_of_user(*, user: Any, auth: Any = None) -> QuerySet[Membership]:
    if not is_person(user):
        return Membership.objects.none()
    queryset = Membership.objects.filter(user=user).select_related("organization")
    if isinstance(auth, ApiToken):
        queryset = queryset.filter(organization_id=auth.organization_id)
    return queryset.order_by("organization__name")


def members_of_organization(*, organization: Organization) -> QuerySet[Membership]:
    return Membership.objects.filter(organization=organization).select_related("user").order_by("created_at")


def api_tokens_of_user(*, user: Any) -> QuerySet[ApiToken]:
    """The user's own tokens that are still usable (unrevoked, unexpired)."""
    return (
        ApiToken.objects.filter(user=user, revoked_at__isnull=True, expires_at__gt=timezone.now())
        .select_related("organization")
        .order_by("-created_at")
    )


def enrollment_tokens_of_organization(*, organization: Organization) -> QuerySet[EnrollmentToken]:
    return EnrollmentToken.objects.filter(organization=organization, revoked_at__isnull=True).order_by(
        "-created_at"
    )


def audit_of_box(*, box: Box) -> QuerySet[AuditLog]:
    return AuditLog.objects.filter(box=box).select_related("box").order_by("-created_at")


def audit_visible(
    *, user: Any, auth: Any = None, filters: dict[str, Any] | None = None
) -> QuerySet[AuditLog]:
    """Audit entries: staff see all; owners and admins the entries of their organisations.
    Filters: ``action`` (prefix), ``actor`` (label contains), ``serial``, ``q`` (any of those)."""
    queryset = AuditLog.objects.select_related("box", "organization")
    if isinstance(auth, ApiToken) or not is_staff(user):
        memberships = Membership.objects.filter(
            user=user if is_person(user) else None,
            role__in=[role for role, rank in ROLE_RANK.items() if rank >= ROLE_RANK[Role.ADMIN]],
        )
        if isinstance(auth, ApiToken):
            memberships = memberships.filter(organization_id=auth.organization_id)
        queryset = queryset.filter(organization_id__in=memberships.values("organization_id"))
    filters = filters or {}
    if action := filters.get("action"):
        queryset = queryset.filter(action__startswith=action)
    if actor := filters.get("actor"):
        queryset = queryset.filter(actor_label__icontains=actor)
    if serial := filters.get("serial"):
        queryset = queryset.filter(box__serial__iexact=serial)
    if q := filters.get("q"):
        queryset = queryset.filter(
            Q(action__icontains=q)
            | Q(actor_label__icontains=q)
            | Q(box__serial__icontains=q)
            | Q(request_id=q)
        )
    return queryset.order_by("-created_at")


def membership_get(*, organization: Organization, membership_id: Any) -> Membership:
    """A membership of the organisation, with its user; NotFound otherwise."""
    membership = (
        Membership.objects.select_related("user", "organization")
        .filter(pk=membership_id, organization=organization)
        .first()
    )
    if membership is None:
        raise NotFound("member not found")
    return membership


def api_token_of_user(*, user: Any, token_id: Any) -> ApiToken:
    """One of the person's own API tokens; NotFound for anyone else's."""
    token = ApiToken.objects.select_related("organization").filter(pk=token_id, user_id=user.pk or 0).first()
    if token is None:
        raise NotFound("token not found")
    return token
