"""The box event timeline: append events, then broadcast each to the people watching after commit."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any, cast
from uuid import UUID

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from fleet.core.errors import InvalidInput
from fleet.core.models import Box
from fleet.monitoring.choices import AlertState, EventKind
from fleet.monitoring.models import Alert, Event

logger = logging.getLogger(__name__)

MAX_BATCH = 5000


def event_payload(event: Event) -> dict[str, Any]:
    """The JSON shape of an event, in the API and on the portal websocket."""
    return {
        "id": str(event.id),
        "box": str(event.box_id),
        "organization": str(event.organization_id) if event.organization_id else None,
        "kind": event.kind,
        "ts": event.ts.isoformat(),
        "data": event.data,
    }


def _people_message(event: Event) -> dict[str, Any]:
    return {"kind": "event", "box_id": str(event.box_id), "event": event_payload(event)}


def _broadcast(events: list[Event]) -> None:
    try:
        from fleet.core.doorbells import broadcast_to_people
    except ImportError:  # no live layer deployed: the timeline API still has everything
        return
    for event in events:
        try:
            broadcast_to_people(event.box_id, event.organization_id, _people_message(event))
        except Exception:  # a doorbell never fails the write that rang it
            logger.warning("broadcast of event %s failed", event.pk, exc_info=True)


async def aevents_broadcast(events: list[Event]) -> None:
    """Broadcast committed events to the people watching, from the event loop (the live paths that
    write events in raw SQL call this after their commit)."""
    from fleet.core.doorbells import abroadcast_to_people

    for event in events:
        await abroadcast_to_people(event.box_id, event.organization_id, _people_message(event))


def _build(item: dict[str, Any], organizations: dict[Any, Any], now: datetime) -> Event:
    kind = item.get("kind")
    if kind not in EventKind.values:
        raise InvalidInput(f"unknown event kind {kind!r}", field="kind")
    data = item.get("data") or {}
    if not isinstance(data, dict):
        raise InvalidInput("data must be an object", field="data")
    box_id = item.get("box_id")
    if box_id is None:
        raise InvalidInput("box_id is required", field="box_id")
    organization_id = item.get("organization_id")
    if organization_id is None:
        organization_id = organizations.get(str(box_id))
    return Event(
        box_id=box_id,
        organization_id=organization_id,
        kind=kind,
        ts=item.get("ts") or now,
        data=data,
    )


def events_record_batch(events: list[dict[str, Any]]) -> list[Event]:
    """Append many events in one INSERT (each dict: ``box_id``, ``kind``, ``data``, optional ``ts``
    and ``organization_id``, the box's organisation when omitted) and broadcast them to people
    after commit. Raises InvalidInput naming ``kind``/``data``/``box_id`` before writing anything."""
    if not events:
        return []
    if len(events) > MAX_BATCH:
        raise InvalidInput(f"at most {MAX_BATCH} events per batch", field="events")
    missing = {str(item.get("box_id")) for item in events if item.get("organization_id") is None}
    organizations: dict[Any, Any] = {}
    if missing:
        organizations = {
            str(box_id): org_id
            for box_id, org_id in Box.objects.filter(pk__in=[m for m in missing if m != "None"]).values_list(
                "pk", "organization_id"
            )
        }
    now = timezone.now()
    rows = [_build(item, organizations, now) for item in events]
    with transaction.atomic(savepoint=False):  # no savepoint round trips inside a caller's transaction
        created = Event.objects.bulk_create(rows)
        transaction.on_commit(lambda: _broadcast(created))
    return created


def event_record(
    *,
    box_id: UUID | str,
    kind: str,
    data: dict[str, Any] | None = None,
    ts: datetime | None = None,
    organization_id: UUID | str | None = None,
) -> Event:
    """Append one event to a box's timeline (``ts`` defaults to now) and broadcast it after commit."""
    return events_record_batch(
        [{"box_id": box_id, "kind": kind, "data": data or {}, "ts": ts, "organization_id": organization_id}]
    )[0]


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
