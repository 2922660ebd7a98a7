"""Writes of the live session and presence: the reconnect penalty and the presence sweep.

The connect, ``hello`` and end of sessions are batched by ``fleet.live.gate`` (the session
gate); storage maintenance (partitions, rollups, retention) is in ``fleet.telemetry.storage``; the
telemetry hot path is ``fleet.telemetry.writer``. Each function here is called by exactly one edge
(the agent consumer or a Celery task) and commits its events with the change.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import cast
from uuid import UUID

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from fleet.core.doorbells import broadcast_to_people
from fleet.core.events import events_record_batch
from fleet.telemetry.models import BoxStatus

logger = logging.getLogger(__name__)


def _presence_broadcast(box_id: UUID, organization_id: UUID | None, online: bool) -> None:
    message = {"kind": "presence", "box_id": str(box_id), "online": online}
    transaction.on_commit(lambda: broadcast_to_people(box_id, organization_id, message))


def agent_session_penalize(*, box_id: UUID, seconds: float | None = None) -> float:
    """Refuse the box's reconnections for a while (it sent too many invalid frames); the session
    gate reads ``penalty_until`` with the token on every connect."""
    seconds = float(seconds or cast(int, settings.OTB.get("INVALID_FRAME_PENALTY_S", 60)))
    BoxStatus.objects.filter(box_id=box_id).update(penalty_until=timezone.now() + timedelta(seconds=seconds))
    return seconds


def presence_sweep(*, now: datetime | None = None, batch_size: int = 1000) -> int:
    """Mark offline every online box not seen for 3 heartbeat intervals; returns how many.

    Rows being written by the telemetry writer are skipped (SKIP LOCKED): they are being seen.
    """
    now = now or timezone.now()
    stale_before = now - timedelta(seconds=3 * cast(int, settings.OTB["HEARTBEAT_INTERVAL_S"]))
    with transaction.atomic():
        stale = list(
            BoxStatus.objects.select_for_update(skip_locked=True, of=("self",))
            .filter(online=True, last_seen_at__lt=stale_before)
            .select_related("box")
            .order_by("pk")[:batch_size]
        )
        if not stale:
            return 0
        BoxStatus.objects.filter(pk__in=[status.pk for status in stale]).update(
            online=False, offline_since=now, updated_at=now
        )
        events = []
        for status in stale:
            organization_id = status.box.organization_id
            events.append(
                {
                    "box_id": status.box_id,
                    "organization_id": organization_id,
                    "kind": "box_offline",
                    "ts": now,
                    "data": {
                        "reason": "silent",
                        "last_seen_at": cast(datetime, status.last_seen_at).isoformat(),
                    },
                }
            )
            _presence_broadcast(status.box_id, organization_id, False)
        events_record_batch(events)
    return len(stale)
