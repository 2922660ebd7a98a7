"""The box event timeline: the one way to record an event. Events are appended in the caller's
transaction (atomic with what caused them) and broadcast to the people watching after commit.

The live paths that write in raw SQL on their own connections (the session gate, the telemetry
writer) insert :func:`event_rows` with ``EVENTS_INSERT_SQL`` in their own transaction and broadcast
with :func:`aevents_broadcast` after their commit."""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterable
from datetime import datetime
from typing import Any
from uuid import UUID

from django.db import transaction
from django.utils import timezone

from fleet.core.background import task_queue
from fleet.core.choices import EventKind
from fleet.core.column_specs import model_spec
from fleet.core.doorbells import abroadcast_to_people, broadcast_to_people
from fleet.core.errors import InvalidInput
from fleet.core.models import Box, Event

logger = logging.getLogger(__name__)

MAX_BATCH = 5000

# Events the box's organisation is also told about, not only shown on the timeline: after commit the
# monitoring app's task sends them to its notification targets (or its owners), as alerts are sent.
# By name: core never imports the app that does it (fleet.core.background).
NOTIFIED_KINDS = frozenset({EventKind.PUBLIC_IP_CHANGED})
EVENT_NOTICE_TASK = "fleet.monitoring.tasks.event_notice_send_task"

# The raw-SQL form of ``events_record_batch`` for the live paths on their own async connections: one
# INSERT of column arrays, in the caller's transaction (see ``event_rows``, which fills them in this
# order).
EVENT_INSERT = model_spec(Event, "id", "box", "organization", "kind", "ts", "data")
EVENTS_INSERT_SQL = (
    f"INSERT INTO {EVENT_INSERT.table} ({EVENT_INSERT.column_list}) "  # noqa: S608
    f"SELECT * FROM {EVENT_INSERT.unnest_sql()}"
)


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


def _notices_queue(events: list[Event]) -> None:
    for event in events:
        # A notice not queued here is found by the monitoring sweep (event_notices_sweep).
        task_queue(EVENT_NOTICE_TASK, str(event.pk))


def _broadcast(events: list[Event]) -> None:
    for event in events:
        try:
            broadcast_to_people(event.box_id, event.organization_id, _people_message(event))
        except Exception:  # a doorbell never fails the write that rang it
            logger.warning("broadcast of event %s failed", event.pk, exc_info=True)


async def aevents_broadcast(events: list[Event]) -> None:
    """Broadcast committed events to the people watching, from the event loop (the live paths that
    write events in raw SQL call this after their commit)."""
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
    after commit; events of ``NOTIFIED_KINDS`` are also queued for notification after commit.
    Raises InvalidInput naming ``kind``/``data``/``box_id`` before writing anything."""
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
        notified = [event for event in created if event.kind in NOTIFIED_KINDS and event.organization_id]
        if notified:
            transaction.on_commit(lambda: _notices_queue(notified))
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


def event_rows(
    events: Iterable[tuple[Any, Any, datetime, str, dict[str, Any]]],
) -> tuple[list[Event], tuple[list[Any], ...]]:
    """(box id, organisation id, ts, kind, data) tuples as unsaved ``Event`` objects (to broadcast
    after the commit) and as the column arrays of ``EVENTS_INSERT_SQL``. A kind that is not an
    ``EventKind`` raises InvalidInput before anything is written, as ``events_record_batch`` does."""
    objects = []
    for box_id, organization_id, ts, kind, data in events:
        if kind not in EventKind.values:
            raise InvalidInput(f"unknown event kind {kind!r}", field="kind")
        objects.append(
            Event(
                id=uuid.uuid4(), box_id=box_id, organization_id=organization_id, kind=kind, ts=ts, data=data
            )
        )
    columns = (
        [event.id for event in objects],
        [event.box_id for event in objects],
        [event.organization_id for event in objects],
        [event.kind for event in objects],
        [event.ts for event in objects],
        [json.dumps(event.data) for event in objects],
    )
    return objects, columns
