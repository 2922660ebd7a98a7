"""Celery edge for monitoring: periodic evaluation, deliveries with retries, notices of box events,
the stale sweep."""

from __future__ import annotations

import logging
from typing import Any, cast

from celery import shared_task
from django.conf import settings

from fleet.core.events import EVENT_NOTICE_TASK
from fleet.monitoring.services import (
    alerts_evaluate,
    event_notice_send,
    event_notices_sweep,
    notification_deliver,
    notification_retry_delay,
    notifications_requeue_stale,
)
from fleet.monitoring.services.alerts import NOTIFICATION_DELIVER_TASK
from fleet.monitoring.services.notifications import MAX_ATTEMPTS
from fleet.monitoring.services.retention import events_prune

logger = logging.getLogger(__name__)


@shared_task(name="fleet.monitoring.tasks.alerts_evaluate_task", ignore_result=True, time_limit=120)
def alerts_evaluate_task() -> dict[str, int]:
    """Periodic (every 30 s): evaluate every enabled alert rule."""
    summary = alerts_evaluate()
    return {"rules": summary.rules, "fired": summary.fired, "resolved": summary.resolved}


@shared_task(
    bind=True,
    name=NOTIFICATION_DELIVER_TASK,
    ignore_result=True,
    max_retries=MAX_ATTEMPTS - 1,
    acks_late=True,
    time_limit=60,
)
def notification_deliver_task(self: Any, delivery_id: str) -> str | None:
    """One attempt at a delivery; re-queues itself with exponential backoff while it stays pending.
    A countdown the broker could hand out twice (over half its visibility timeout) is left to the
    sweep, which queues the delivery when its attempt is due (``next_attempt_at``)."""
    outcome = notification_deliver(delivery_id=delivery_id)
    if outcome is None:
        return None
    if outcome.retry:
        countdown = notification_retry_delay(outcome.attempts)
        if countdown <= int(cast(int, settings.OTB["BROKER_VISIBILITY_TIMEOUT_S"])) / 2:
            raise self.retry(countdown=countdown)
    return outcome.state


@shared_task(name=EVENT_NOTICE_TASK, ignore_result=True, time_limit=60)
def event_notice_send_task(event_id: str) -> int:
    """Queued after the commit of an event of NOTIFIED_KINDS: create and queue its notice deliveries."""
    return len(event_notice_send(event_id=event_id))


@shared_task(
    name="fleet.monitoring.tasks.notifications_requeue_stale_task", ignore_result=True, time_limit=60
)
def notifications_requeue_stale_task() -> int:
    """Periodic (every minute, ``OTB_NOTIFY_SWEEP_S``): queue the overdue deliveries whose task was
    lost, and send the notices whose task was lost."""
    return notifications_requeue_stale() + event_notices_sweep()


@shared_task(name="fleet.monitoring.tasks.events_prune_task", ignore_result=True, time_limit=600)
def events_prune_task() -> int:
    """Periodic (hourly): drop timeline events older than EVENT_RETENTION_DAYS, in batches."""
    return events_prune()
