"""Delivery of upgrades to boxes through the ``fleet.commands`` path, in bulk.

``fleet.commands.services.command_create`` writes one command per call (and one audit row); a
rollout phase sends hundreds at once, so this module writes the same ``Command`` rows with one
INSERT and rings every box's doorbell after commit in one go. The rows are indistinguishable from
``command_create``'s: the agent session delivers them on the doorbell or at the next hello.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from datetime import datetime, timedelta
from typing import Any

from django.db import transaction

from fleet.commands.choices import CommandKind, CommandState
from fleet.commands.models import Command
from fleet.core.doorbells import AGENT_COMMAND_DOORBELL, agent_group, agroup_send, run_in_channel_loop
from fleet.firmware.models import Release

logger = logging.getLogger(__name__)

MAX_COMMAND_TTL_S = 24 * 3600
MIN_COMMAND_TTL_S = 60
DOORBELL_BATCH = 16


def image_url(release: Release) -> str:
    """Where agents fetch the image: our Range-capable endpoint (a path on the fleet server, fetched
    with the agent token) or the release's external URL (fetched without credentials)."""
    if release.image:
        return f"/api/v1/agent/firmware/{release.pk}/image"
    return release.external_url


def upgrade_params(release: Release) -> dict[str, Any]:
    """The ``firmware_upgrade`` command parameters (the keys ``fleet.commands`` accepts)."""
    return {
        "release_id": str(release.pk),
        "version": release.version,
        "url": image_url(release),
        "sha256": release.sha256,
        "signature": release.signature,
        "size": release.size,
    }


def firmware_commands_create_bulk(
    *, boxes: list[tuple[Any, Any]], release: Release, ttl_s: int, now: datetime
) -> list[uuid.UUID]:
    """Queue one ``firmware_upgrade`` command per ``(box_id, organization_id)``; return their ids in
    the same order. Call inside the caller's transaction; doorbells ring after it commits."""
    ttl = max(MIN_COMMAND_TTL_S, min(ttl_s, MAX_COMMAND_TTL_S))
    params = upgrade_params(release)
    commands = [
        Command(
            id=uuid.uuid4(),
            box_id=box_id,
            organization_id=organization_id,
            kind=CommandKind.FIRMWARE_UPGRADE,
            params=params,
            state=CommandState.PENDING,
            expires_at=now + timedelta(seconds=ttl),
        )
        for box_id, organization_id in boxes
    ]
    Command.objects.bulk_create(commands, batch_size=1000)
    box_ids = [box_id for box_id, _ in boxes]
    transaction.on_commit(lambda: doorbells_ring(box_ids))
    return [command.id for command in commands]


def doorbells_ring(box_ids: list[Any]) -> None:
    """Ring the live session of each box (best effort: a box that misses it gets its commands at
    its next hello)."""
    if not box_ids:
        return

    async def ring() -> None:
        message = {"type": AGENT_COMMAND_DOORBELL}
        # small concurrent batches: the channel layer's Redis pool is bounded per process
        for start in range(0, len(box_ids), DOORBELL_BATCH):
            await asyncio.gather(
                *(
                    agroup_send(agent_group(box_id), message)
                    for box_id in box_ids[start : start + DOORBELL_BATCH]
                )
            )

    try:
        run_in_channel_loop(ring(), timeout=60)
    except Exception:  # the doorbell is best effort; the rows are committed
        logger.warning("ringing %d firmware doorbells failed", len(box_ids), exc_info=True)


def commands_cancel_unstarted(*, command_ids: list[Any], now: datetime) -> set[uuid.UUID]:
    """Cancel the given commands the box has not started (pending or sent); return those cancelled.
    A box that already received one may still run it; its late result is ignored by the commands app."""
    cancelled = list(
        Command.objects.select_for_update()
        .filter(pk__in=command_ids, state__in=[CommandState.PENDING, CommandState.SENT])
        .values_list("pk", flat=True)
    )
    Command.objects.filter(pk__in=cancelled).update(state=CommandState.CANCELLED, finished_at=now)
    return set(cancelled)
