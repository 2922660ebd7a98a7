"""Retention of the history (fleet.monitoring.services.retention): old events pruned in bounded
batches, resolved alerts past the retention removed with their deliveries."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from fleet.core.models import Event
from fleet.monitoring.models import Alert, NotificationDelivery
from fleet.monitoring.services.retention import events_prune
from tests.fleet.monitoring.conftest import offline_rule

pytestmark = pytest.mark.django_db


def test_events_older_than_the_retention_are_pruned_in_batches(box: Any, settings: Any) -> None:
    # given 30 days of retention and 7 events over 40 days
    settings.OTB = {**settings.OTB, "EVENT_RETENTION_DAYS": 30}
    now = timezone.now()
    ages = [40, 35, 31, 30.5, 29, 5, 0]
    Event.objects.bulk_create(
        [Event(box=box, kind="box_online", ts=now - timedelta(days=age), data={}) for age in ages]
    )
    # when the prune runs with batches of 2
    deleted = events_prune(now=now, batch_size=2)
    # then exactly the 4 older than 30 days are gone, the rest kept
    assert deleted == 4
    kept = sorted(
        round((now - ts).total_seconds() / 86400, 1) for ts in Event.objects.values_list("ts", flat=True)
    )
    assert kept == [0.0, 5.0, 29.0]
    # and a second run finds nothing
    assert events_prune(now=now, batch_size=2) == 0


def test_the_prune_stops_after_max_batches_and_the_next_run_goes_on(box: Any, settings: Any) -> None:
    settings.OTB = {**settings.OTB, "EVENT_RETENTION_DAYS": 1}
    old = timezone.now() - timedelta(days=10)
    Event.objects.bulk_create([Event(box=box, kind="box_online", ts=old, data={}) for _ in range(5)])
    assert events_prune(batch_size=2, max_batches=1) == 2
    assert events_prune(batch_size=2, max_batches=10) == 3
    assert not Event.objects.exists()


def test_resolved_alerts_past_the_retention_go_with_their_deliveries(
    people: Any, box_factory: Any, settings: Any, email_target: Any
) -> None:
    from fleet.monitoring.services.retention import events_prune

    # given 30 days of history, an alert resolved 40 days ago with a delivery, one resolved yesterday
    # and one still firing since long ago
    settings.OTB = {**settings.OTB, "EVENT_RETENTION_DAYS": 30}
    target = email_target
    rule = offline_rule(people, [target])
    now = timezone.now()

    def alert(box: Any, state: str, resolved_days_ago: float | None) -> Alert:
        resolved_at = now - timedelta(days=resolved_days_ago) if resolved_days_ago is not None else None
        return Alert.objects.create(
            rule=rule,
            organization=people.org,
            box=box,
            state=state,
            started_at=now - timedelta(days=60),
            resolved_at=resolved_at,
        )

    old = alert(box_factory(organization=people.org), "resolved", 40)
    NotificationDelivery.objects.create(alert=old, target=target, event="resolved")
    recent = alert(box_factory(organization=people.org), "resolved", 1)
    firing = alert(box_factory(organization=people.org), "firing", None)
    # when the history is pruned
    assert events_prune(now=now) == 1
    # then only the old resolved alert and its delivery are gone
    assert set(Alert.objects.values_list("pk", flat=True)) == {recent.pk, firing.pk}
    assert not NotificationDelivery.objects.filter(alert_id=old.pk).exists()
