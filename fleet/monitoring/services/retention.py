"""Retention of the history: timeline events and resolved alerts older than ``EVENT_RETENTION_DAYS``."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any, cast

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from fleet.core.models import Event
from fleet.monitoring.choices import AlertState
from fleet.monitoring.models import Alert

logger = logging.getLogger(__name__)


def _prune(queryset: Any, order: str, batch_size: int, max_batches: int) -> int:
    """Delete the rows of ``queryset`` in ``order``, ``batch_size`` per short transaction, at most
    ``max_batches`` batches (the next run goes on). Returns how many were deleted."""
    deleted = 0
    for _ in range(max_batches):
        with transaction.atomic():
            ids = list(queryset.order_by(order).values_list("id", flat=True)[:batch_size])
            if not ids:
                break
            queryset.model.objects.filter(id__in=ids).delete()
        deleted += len(ids)
        if len(ids) < batch_size:
            break
    return deleted


def events_prune(*, now: datetime | None = None, batch_size: int = 5000, max_batches: int = 200) -> int:
    """Delete the history older than ``EVENT_RETENTION_DAYS``: timeline events, and resolved alerts
    with their notification deliveries. Oldest first, ``batch_size`` per short transaction (a year of
    a large fleet is millions of rows: one DELETE would hold locks and bloat for minutes). Returns how
    many events and alerts were deleted."""
    days = int(cast(Any, settings.OTB)["EVENT_RETENTION_DAYS"])
    cutoff = (now or timezone.now()) - timedelta(days=days)
    events = _prune(Event.objects.filter(ts__lt=cutoff), "ts", batch_size, max_batches)
    alerts = _prune(
        Alert.objects.filter(state=AlertState.RESOLVED, resolved_at__lt=cutoff),
        "resolved_at",
        batch_size,
        max_batches,
    )
    if events or alerts:
        logger.info(
            "pruned %d events and %d resolved alerts older than %s", events, alerts, cutoff.isoformat()
        )
    return events + alerts
