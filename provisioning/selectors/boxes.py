"""Reads of boxes as people see them: with organisation, server, region and public IPv4, scoped to
what the caller may see (``fleet.core.access``), filtered (``BoxFilter``). Every list runs a fixed
number of queries whatever its length: related rows are joined and the public IPv4 comes from a
correlated subquery."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any, TypedDict

import django_filters
from django.db.models import CharField, F, Func, OuterRef, Q, QuerySet, Subquery
from rest_framework.exceptions import ValidationError

from fleet.core.access import visible_organization_ids
from fleet.core.choices import BoxState
from fleet.core.models import BOX_DRIFTING, Box
from provisioning.choices import AssignmentState, PoolPurpose
from provisioning.models import AddressAssignment

if TYPE_CHECKING:
    from django_stubs_ext import WithAnnotations  # dev-only (django-stubs): typing, not run time


def public_ipv4_subquery() -> Subquery:
    """The host address of the box's active public IPv4 assignment (or NULL), as text."""
    return Subquery(
        AddressAssignment.objects.filter(
            box=OuterRef("pk"), purpose=PoolPurpose.PUBLIC_IPV4, state=AssignmentState.ACTIVE
        )
        .annotate(host=Func(F("prefix"), function="host", output_field=CharField()))
        .values("host")[:1],
        output_field=CharField(),
    )


class PublicAddress(TypedDict):
    public_ipv4: str | None


def boxes_annotated(
    queryset: QuerySet[Box] | None = None,
) -> QuerySet[WithAnnotations[Box, PublicAddress]]:
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

    # Filters whose value has a type (a UUID, a state, a boolean): never empty.
    TYPED = ("organization", "state", "server", "drift")

    class Meta:
        model = Box
        fields: list[str] = []

    def filter_region(self, queryset: QuerySet[Box], name: str, value: str) -> QuerySet[Box]:
        """A region by its code, or by its id."""
        try:
            return queryset.filter(server__region_id=uuid.UUID(value))
        except ValueError:
            return queryset.filter(server__region__code=value)

    def filter_q(self, queryset: QuerySet[Box], name: str, value: str) -> QuerySet[Box]:
        return queryset.filter(
            Q(serial__icontains=value) | Q(name__icontains=value) | Q(mac__icontains=value)
        )

    def filter_drift(self, queryset: QuerySet[Box], name: str, value: str) -> QuerySet[Box]:
        return queryset.filter(BOX_DRIFTING) if value in ("true", "1") else queryset.exclude(BOX_DRIFTING)

    def filter_tag(self, queryset: QuerySet[Box], name: str, value: str) -> QuerySet[Box]:
        return queryset.filter(tags__contains=[value])


def box_list(*, user: Any, auth: Any = None, filters: dict[str, Any] | None = None) -> QuerySet[Box]:
    """The visible boxes narrowed by ``BoxFilter``; invalid filter values raise ValidationError."""
    queryset = boxes_visible(user=user, auth=auth)
    # django-filter takes ``?state=`` as no filter; a typed filter given empty is refused instead
    blank = sorted(name for name in BoxFilter.TYPED if (filters or {}).get(name) == "")
    if blank:
        raise ValidationError({name: ["must not be empty"] for name in blank})
    filterset = BoxFilter(filters or {}, queryset=queryset)
    if not filterset.is_valid():
        raise ValidationError(filterset.errors)
    return filterset.qs.order_by("serial")


def box_addresses(*, box: Box) -> list[AddressAssignment]:
    """The box's active address assignments with their pools, by purpose (one query)."""
    return list(box.addresses.filter(state=AssignmentState.ACTIVE).select_related("pool").order_by("purpose"))
