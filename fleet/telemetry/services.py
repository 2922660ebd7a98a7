"""Writes of the live session and presence: session connect/hello/close, the presence sweep.

Storage maintenance (partitions, rollups, retention) is in ``fleet.telemetry.storage``; the telemetry
hot path is ``fleet.telemetry.writer``. Each function here is called by exactly one edge (the agent
consumer or a Celery task) and commits its events with the change.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast
from uuid import UUID

from django.apps import apps
from django.conf import settings
from django.core.cache import cache
from django.db import transaction
from django.utils import timezone

from fleet.audit import Actor, audit_record
from fleet.authentication import agent_box_of_token
from fleet.live import broadcast_to_people
from fleet.models import Box
from fleet.telemetry.models import BoxStatus
from fleet.tokens import TokenKind, token_kind

logger = logging.getLogger(__name__)

MAX_TOKEN_LENGTH = 200


@dataclass(frozen=True)
class SessionGrant:
    """The outcome of a websocket connect: a box to serve, or a penalty still running."""

    box_id: UUID | None
    organization_id: UUID | None = None
    serial: str = ""
    retry_after_s: float = 0.0


def _penalty_key(box_id: UUID | str) -> str:
    return f"live:penalty:{box_id}"


def events_record(events: list[dict[str, Any]]) -> None:
    """Record events through the monitoring app, if it is installed yet (owned by ops)."""
    if not events:
        return
    if not apps.is_installed("fleet.monitoring"):
        logger.info("fleet.monitoring not installed; %d presence events not recorded", len(events))
        return
    try:
        from fleet.monitoring.services import events_record_batch
    except ImportError:
        logger.info("fleet.monitoring not available; %d presence events not recorded", len(events))
        return
    events_record_batch(events)


def _presence_broadcast(box_id: UUID, organization_id: UUID | None, online: bool) -> None:
    message = {"kind": "presence", "box_id": str(box_id), "online": online}
    transaction.on_commit(lambda: broadcast_to_people(box_id, organization_id, message))


def agent_session_connect(*, token: str | None, session_id: str) -> SessionGrant | None:
    """Authenticate an agent websocket and make ``session_id`` the box's current session.

    None for an unknown, revoked or malformed token. A grant with ``retry_after_s > 0`` (and no
    session claimed) while the box serves a penalty for sending too many invalid frames.
    """
    if not token or len(token) > MAX_TOKEN_LENGTH or token_kind(token) != TokenKind.AGENT:
        return None
    identity = agent_box_of_token(token)
    if identity is None:
        return None
    box_id, organization_id, serial = identity
    until = cache.get(_penalty_key(box_id))
    if until is not None and float(until) > time.time():
        return SessionGrant(box_id=box_id, retry_after_s=max(1.0, round(float(until) - time.time(), 1)))
    # One INSERT ... ON CONFLICT DO UPDATE (update_or_create takes a lock, a savepoint and two more
    # statements; a reconnect storm runs this once per box).
    BoxStatus.objects.bulk_create(
        [BoxStatus(box_id=box_id, session_id=session_id, connected_at=timezone.now())],
        update_conflicts=True,
        unique_fields=["box"],
        update_fields=["session_id", "connected_at", "updated_at"],
    )
    return SessionGrant(box_id=box_id, organization_id=organization_id, serial=serial)


def agent_session_penalize(*, box_id: UUID, seconds: float | None = None) -> float:
    """Refuse the box's reconnections for a while (it sent too many invalid frames)."""
    seconds = float(seconds or cast(int, settings.OTB.get("INVALID_FRAME_PENALTY_S", 60)))
    cache.set(_penalty_key(box_id), time.time() + seconds, timeout=int(seconds) + 1)
    return seconds


def _pending_commands(box_id: UUID) -> list[dict[str, Any]]:
    if not apps.is_installed("fleet.commands"):
        return []
    try:
        from fleet.commands.services import commands_pending_for_box
    except ImportError:
        return []
    return list(commands_pending_for_box(box_id=box_id))


def agent_session_hello(*, box_id: UUID, session_id: str, hello: dict[str, Any]) -> dict[str, Any] | None:
    """Mark the box online for this session and build the ``welcome`` frame.

    Returns None when another session has replaced this one meanwhile. Records ``session_opened``,
    ``box_online`` (if it was offline) and ``firmware_changed`` events, and audits a change of the
    box's reported firmware or agent version.
    """
    now = timezone.now()
    firmware = hello["firmware_version"].replace("\x00", "")
    agent_version = hello["agent_version"].replace("\x00", "")
    boot_id = hello["boot_id"].replace("\x00", "")
    # Narrow reads and one UPDATE: every session of a reconnect storm says hello, and loading (and
    # compiling the SQL of) the whole status and box rows was most of its cost.
    with transaction.atomic():
        current = (
            BoxStatus.objects.select_for_update()
            .filter(box_id=box_id, session_id=session_id)
            .values_list("online", "firmware_version", "last_seq")
            .first()
        )
        if current is None:
            return None
        was_online, status_firmware, last_seq = current
        box = (
            Box.objects.select_for_update()
            .only("serial", "organization_id", "config_hash", "firmware_version", "agent_version")
            .get(pk=box_id)
        )
        previous_firmware = status_firmware or box.firmware_version
        BoxStatus.objects.filter(box_id=box_id).update(
            online=True,
            offline_since=None,
            last_seen_at=now,
            boot_id=boot_id,
            uptime_s=hello["uptime_s"],
            agent_version=agent_version,
            firmware_version=firmware,
            dropped_samples=hello["dropped_samples"],
            updated_at=now,
        )
        if box.firmware_version != firmware or box.agent_version != agent_version:
            before = {"firmware_version": box.firmware_version, "agent_version": box.agent_version}
            box.firmware_version = firmware
            box.agent_version = agent_version
            box.save(update_fields=["firmware_version", "agent_version", "updated_at"])
            audit_record(
                actor=Actor(label=f"box:{box.serial}"),
                action="box.versions_reported",
                box=box,
                target=box,
                before=before,
                after={"firmware_version": firmware, "agent_version": agent_version},
            )
        base = {"box_id": box_id, "organization_id": box.organization_id, "ts": now}
        events = [{**base, "kind": "session_opened", "data": {"session_id": session_id, "boot_id": boot_id}}]
        if not was_online:
            events.append({**base, "kind": "box_online", "data": {"session_id": session_id}})
            _presence_broadcast(box_id, box.organization_id, True)
        if previous_firmware and previous_firmware != firmware:
            events.append(
                {**base, "kind": "firmware_changed", "data": {"from": previous_firmware, "to": firmware}}
            )
        events_record(events)
        commands = _pending_commands(box_id)
    return {
        "type": "welcome",
        "session_id": session_id,
        "telemetry_interval_s": settings.OTB["TELEMETRY_INTERVAL_S"],
        "heartbeat_interval_s": settings.OTB["HEARTBEAT_INTERVAL_S"],
        "desired_config_hash": box.config_hash or None,
        "last_acked_seq": last_seq,
        "pending_commands": commands[:100],
    }


def agent_session_close(*, box_id: UUID, session_id: str, code: int | None = None) -> bool:
    """End a session: the box goes offline only if this is still its current session.

    Returns True when the box was marked offline by this call.
    """
    now = timezone.now()
    with transaction.atomic():
        status = BoxStatus.objects.select_for_update().filter(box_id=box_id).first()
        if status is None or status.session_id != session_id:
            return False
        was_online = status.online
        status.online = False
        status.disconnected_at = now
        if was_online:
            status.offline_since = now
        status.save(update_fields=["online", "disconnected_at", "offline_since", "updated_at"])
        organization_id = Box.objects.filter(pk=box_id).values_list("organization_id", flat=True).first()
        base = {"box_id": box_id, "organization_id": organization_id, "ts": now}
        events = [{**base, "kind": "session_closed", "data": {"session_id": session_id, "code": code}}]
        if was_online:
            events.append({**base, "kind": "box_offline", "data": {"reason": "disconnected", "code": code}})
            _presence_broadcast(box_id, organization_id, False)
        events_record(events)
    return was_online


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
        events_record(events)
    return len(stale)
