"""Reads of the fleet app, scoped to what the caller may see (``fleet.core.access``).

Every list here runs a fixed number of queries whatever its length: related rows are joined
(``select_related``) and the box's public IPv4 comes from a correlated subquery.
"""

from __future__ import annotations

from typing import Any

import django_filters
from django.db.models import CharField, F, Func, OuterRef, Q, QuerySet, Subquery
from django.utils import timezone

from fleet.core.access import ROLE_RANK, is_staff, visible_organization_ids
from fleet.core.choices import BoxState, Role
from fleet.core.models import ApiToken, AuditLog, Box, EnrollmentToken, Membership, Organization
from fleet.core.permissions import is_person


def public_ipv4_subquery() -> Subquery:
    """The host address of the box's active public IPv4 assignment (or NULL), as text."""
    from provisioning.choices import AssignmentState, PoolPurpose
    from provisioning.models import AddressAssignment

    return Subquery(
        AddressAssignment.objects.filter(
            box=OuterRef("pk"), purpose=PoolPurpose.PUBLIC_IPV4, state=AssignmentState.ACTIVE
        )
        .annotate(host=Func(F("prefix"), function="host", output_field=CharField()))
        .values("host")[:1],
        output_field=CharField(),
    )


def boxes_annotated(queryset: QuerySet[Box] | None = None) -> QuerySet[Box]:
    """Boxes with organisation, server and region joined and ``public_ipv4`` annotated."""
    queryset = Box.objects.all() if queryset is None else queryset
    return queryset.select_related("organization", "server", "server__region").annotate(
        public_ipv4=public_ipv4_subquery()
    )


def boxes_visible(*, user: Any, auth: Any = None) -> QuerySet[Box]:
    """Boxes the caller may read: staff see every box; members the boxes of their organisations
    (narrowed to the API token's organisation when one is used)."""
    org_ids = visible_organization_ids(user, auth)
    queryset = Box.objects.all() if org_ids is None else Box.objects.filter(organization_id__in=org_ids)
    return boxes_annotated(queryset)


class BoxFilter(django_filters.FilterSet):
    """Filters of the box list: ``?organization=&state=&server=&region=&q=&drift=&tag=``."""

    organization = django_filters.UUIDFilter(field_name="organization_id")
    state = django_filters.ChoiceFilter(choices=BoxState.choices)
    server = django_filters.UUIDFilter(field_name="server_id")
    region = django_filters.CharFilter(method="filter_region")
    q = django_filters.CharFilter(method="filter_q", max_length=100)
    drift = django_filters.ChoiceFilter(
        choices=[("true", "true"), ("false", "false"), ("1", "1"), ("0", "0")], method="filter_drift"
    )
    tag = django_filters.CharFilter(method="filter_tag", max_length=40)
    firmware = django_filters.CharFilter(field_name="firmware_version")

    class Meta:
        model = Box
        fields: list[str] = []

    def filter_region(self, queryset: QuerySet[Box], name: str, value: str) -> QuerySet[Box]:
        """A region by its code, or by its id."""
        try:
            import uuid

            return queryset.filter(server__region_id=uuid.UUID(value))
        except ValueError:
            return queryset.filter(server__region__code=value)

    def filter_q(self, queryset: QuerySet[Box], name: str, value: str) -> QuerySet[Box]:
        return queryset.filter(
            Q(serial__icontains=value) | Q(name__icontains=value) | Q(mac__icontains=value)
        )

    def filter_drift(self, queryset: QuerySet[Box], name: str, value: str) -> QuerySet[Box]:
        drifting = ~Q(config_hash="") & ~Q(config_hash=F("applied_config_hash"))
        return queryset.filter(drifting) if value in ("true", "1") else queryset.exclude(drifting)

    def filter_tag(self, queryset: QuerySet[Box], name: str, value: str) -> QuerySet[Box]:
        return queryset.filter(tags__contains=[value])


def box_list(*, user: Any, auth: Any = None, filters: dict[str, Any] | None = None) -> QuerySet[Box]:
    """The visible boxes narrowed by ``BoxFilter``; invalid filter values raise ValidationError."""
    queryset = boxes_visible(user=user, auth=auth)
    filterset = BoxFilter(filters or {}, queryset=queryset)
    if not filterset.is_valid():
        from rest_framework.exceptions import ValidationError

        raise ValidationError(filterset.errors)
    return filterset.qs.order_by("serial")


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
