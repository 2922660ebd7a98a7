"""Reads for the monitoring app. Callers resolve the box/organisation with fleet.core.access first."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from django.db.models import Q, QuerySet

from fleet.core.errors import NotFound
from fleet.core.models import Event
from fleet.monitoring.choices import OPEN_ALERT_STATES
from fleet.monitoring.models import Alert, AlertRule, NotificationDelivery, NotificationTarget


def event_list(
    *, box_id: UUID | None = None, organization_id: UUID | None = None, filters: dict[str, Any] | None = None
) -> QuerySet[Event]:
    """Events of a box or an organisation, newest first; ``filters``: kind, from, to, box."""
    filters = filters or {}
    queryset = Event.objects.all()
    if box_id is not None:
        queryset = queryset.filter(box_id=box_id)
    if organization_id is not None:
        queryset = queryset.filter(organization_id=organization_id)
    if filters.get("box"):
        queryset = queryset.filter(box_id=filters["box"])
    if filters.get("kind"):
        queryset = queryset.filter(kind=filters["kind"])
    if filters.get("from"):
        queryset = queryset.filter(ts__gte=filters["from"])
    if filters.get("to"):
        queryset = queryset.filter(ts__lt=filters["to"])
    return queryset.order_by("-ts", "-id")


def alert_rule_list(*, organization_id: UUID) -> QuerySet[AlertRule]:
    return (
        AlertRule.objects.filter(organization_id=organization_id)
        .select_related("box")
        .prefetch_related("targets")
        .order_by("name", "id")
    )


def alert_rule_get(*, organization_id: UUID, rule_id: Any) -> AlertRule:
    try:
        return alert_rule_list(organization_id=organization_id).get(pk=UUID(str(rule_id)))
    except (AlertRule.DoesNotExist, ValueError) as exc:
        raise NotFound("alert rule not found") from exc


def notification_target_list(*, organization_id: UUID) -> QuerySet[NotificationTarget]:
    return NotificationTarget.objects.filter(organization_id=organization_id).order_by("name", "id")


def notification_target_get(*, organization_id: UUID, target_id: Any) -> NotificationTarget:
    try:
        return notification_target_list(organization_id=organization_id).get(pk=UUID(str(target_id)))
    except (NotificationTarget.DoesNotExist, ValueError) as exc:
        raise NotFound("notification target not found") from exc


def alert_list(
    *, organization_id: UUID, state: str | None = None, box_id: UUID | None = None
) -> QuerySet[Alert]:
    queryset = Alert.objects.filter(organization_id=organization_id).select_related("rule", "box")
    if state:
        queryset = queryset.filter(state=state)
    if box_id:
        queryset = queryset.filter(box_id=box_id)
    return queryset.order_by("-started_at", "-id")


def alerts_open(*, organization_id: UUID, limit: int = 100) -> list[Alert]:
    """The organisation's pending and firing alerts, newest first (at most ``limit``)."""
    return list(
        Alert.objects.filter(organization_id=organization_id, state__in=OPEN_ALERT_STATES)
        .select_related("rule", "box")
        .order_by("-started_at", "-id")[:limit]
    )


def notification_delivery_list(
    *, organization_ids: list[UUID] | None, alert_id: UUID | None = None
) -> QuerySet[NotificationDelivery]:
    """Deliveries of alerts and of notices in the given organisations (None: all, for staff), newest
    first."""
    queryset = NotificationDelivery.objects.select_related("target")
    if organization_ids is not None:
        visible = organization_ids
        queryset = queryset.filter(
            Q(alert__organization_id__in=visible) | Q(box_event__organization_id__in=visible)
        )
    if alert_id:
        queryset = queryset.filter(alert_id=alert_id)
    return queryset.order_by("-created_at", "-id")
