"""Notices: telling a box's organisation about an event of its timeline that changes something for it
(``fleet.core.events.NOTIFIED_KINDS``, such as a new public IP after a staff reassignment), through the
same delivery rows, retries and webhook signatures as alerts.

The recipients are the organisation's enabled notification targets that existed when the event
happened; an organisation without any is told at its owners' addresses, so a notice always reaches
someone who can act on it. Creating the deliveries is idempotent (unique per event and recipient):
the task queued after the event's commit and the sweep that finds a lost one may both run."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

from django.contrib.auth import get_user_model
from django.db import transaction
from django.utils import timezone

from fleet.core.choices import Role
from fleet.core.events import NOTIFIED_KINDS
from fleet.core.models import Event
from fleet.monitoring.choices import DeliveryState, NotificationEvent
from fleet.monitoring.models import NotificationDelivery, NotificationTarget
from fleet.monitoring.services.alerts import notifications_queue

# The sweep looks this far back for notices whose task was lost (a broker restart); older events are
# history, not news.
SWEEP_LOOKBACK = timedelta(days=1)
SWEEP_GRACE = timedelta(minutes=5)


def _owner_emails(organization_id: Any) -> list[str]:
    users = get_user_model().objects.filter(
        memberships__organization_id=organization_id, memberships__role=Role.OWNER, is_active=True
    )
    return sorted({email for email in users.values_list("email", flat=True) if email})


def event_notice_send(*, event_id: UUID | str) -> list[UUID]:
    """Create the deliveries of the notice of one event (none for an event of another kind, of no
    organisation, or already noticed) and queue them after commit. Returns the pending deliveries of
    the event."""
    with transaction.atomic():
        event = Event.objects.filter(pk=event_id, kind__in=NOTIFIED_KINDS).first()
        if event is None or event.organization_id is None:
            return []
        targets = list(
            NotificationTarget.objects.filter(
                organization_id=event.organization_id, enabled=True, created_at__lte=event.ts
            ).order_by("pk")
        )
        rows = [
            NotificationDelivery(box_event=event, target=target, event=NotificationEvent.NOTICE)
            for target in targets
        ] or [
            NotificationDelivery(box_event=event, email=email, event=NotificationEvent.NOTICE)
            for email in _owner_emails(event.organization_id)
        ]
        NotificationDelivery.objects.bulk_create(rows, ignore_conflicts=True)
        pending = list(
            NotificationDelivery.objects.filter(box_event=event, state=DeliveryState.PENDING).values_list(
                "pk", flat=True
            )
        )
        transaction.on_commit(lambda: notifications_queue(delivery_ids=pending))
    return pending


def event_notices_sweep(*, now: datetime | None = None) -> int:
    """Send the notices of recent events of ``NOTIFIED_KINDS`` that have no delivery yet (their task
    was lost). Returns how many events it sent."""
    now = now or timezone.now()
    ids = list(
        Event.objects.filter(
            kind__in=NOTIFIED_KINDS,
            organization__isnull=False,
            ts__gte=now - SWEEP_LOOKBACK,
            ts__lt=now - SWEEP_GRACE,
            deliveries__isnull=True,
        )
        .order_by("ts")
        .values_list("pk", flat=True)[:1000]
    )
    for event_id in ids:
        event_notice_send(event_id=event_id)
    return len(ids)
