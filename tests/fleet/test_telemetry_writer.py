"""The batching telemetry writer's scheduling, against real PostgreSQL."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from channels.db import database_sync_to_async

from fleet.telemetry.models import BoxStatus
from fleet.telemetry.writer import TelemetryWriter
from tests.fleet.test_consumers import sample

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.asyncio]


async def test_a_full_queue_of_boxes_being_flushed_waits_instead_of_spinning(
    people: Any, box_factory: Any
) -> None:
    # given two boxes, a writer taking two messages per batch with a flush slot to spare, and two
    # messages per box arriving together: the first batch takes one of each box, and the rest (a
    # full batch) all belong to boxes in flight. The writer used to spin on that without yielding,
    # so the flush in flight could never finish: a livelock at 100 % CPU.
    boxes = await database_sync_to_async(lambda: [box_factory(organization=people.org) for _ in range(2)])()
    writer = TelemetryWriter(max_batch=2, flush_interval_ms=5)
    try:
        calls = [
            writer.submit(
                box_id=box.pk, organization_id=people.org.pk, session_id="s", seq=seq, samples=[sample()]
            )
            for seq in (1, 2)
            for box in boxes
        ]
        # when they are stored, then every one commits, in a few batches
        results = await asyncio.wait_for(asyncio.gather(*calls), timeout=20)
    finally:
        await writer.close()
    assert results == [True, True, True, True]
    assert writer.stats["batches"] >= 2
    watermarks = await database_sync_to_async(
        lambda: sorted(BoxStatus.objects.filter(box__in=boxes).values_list("last_seq", flat=True))
    )()
    assert watermarks == [2, 2]
