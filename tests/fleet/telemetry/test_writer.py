"""The telemetry writer against real PostgreSQL: its scheduling, its events (in the telemetry's own
transaction), and where each value lands."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from channels.db import database_sync_to_async
from django.db import connection

from fleet.core.models import Event
from fleet.telemetry import writer as writer_module
from fleet.telemetry.models import BoxStatus, WanStatus
from fleet.telemetry.writer import TelemetryRejected, TelemetryWriter
from tests.fleet.live.test_agent import sample, stored_rows, wan

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


async def test_transition_events_commit_with_the_telemetry_that_caused_them(
    people: Any, box_factory: Any
) -> None:
    # given a box whose link is up, then reported down
    box = await database_sync_to_async(box_factory)(organization=people.org)
    writer = TelemetryWriter(flush_interval_ms=5)
    t0 = time.time() - 20
    try:
        await writer.submit(
            box_id=box.pk,
            organization_id=people.org.pk,
            session_id="s",
            seq=1,
            samples=[sample(t0, [wan("wan1")])],
        )
        # when the down sample is acknowledged
        stored = await writer.submit(
            box_id=box.pk,
            organization_id=people.org.pk,
            session_id="s",
            seq=2,
            samples=[sample(t0 + 10, [wan("wan1", up=False, rtt=None, loss=100.0)])],
        )
    finally:
        await writer.close()
    # then its wan_down event is already committed (same transaction), with the sample's time
    assert stored is True
    [event] = await database_sync_to_async(lambda: list(Event.objects.filter(box=box, kind="wan_down")))()
    assert event.organization_id == people.org.pk
    assert event.data == {"iface": "wan1", "label": "WAN1", "kind": "fiber"}
    assert abs(event.ts.timestamp() - (t0 + 10)) < 0.01


async def test_telemetry_and_its_events_commit_together_or_not_at_all(
    people: Any, box_factory: Any, monkeypatch: Any
) -> None:
    # given a box whose first sample reports a link down (a wan_down event), and an events insert
    # the database refuses
    box = await database_sync_to_async(box_factory)(organization=people.org)
    monkeypatch.setattr(writer_module, "EVENTS_INSERT_SQL", "INSERT INTO fleet_event (id) VALUES (NULL)")
    writer = TelemetryWriter(flush_interval_ms=5)
    try:
        # when the message is stored, then it is refused
        with pytest.raises(TelemetryRejected):
            await writer.submit(
                box_id=box.pk,
                organization_id=people.org.pk,
                session_id="s",
                seq=1,
                samples=[sample(wans=[wan("wan1", up=False, rtt=None, loss=100.0)])],
            )
    finally:
        await writer.close()
    # and nothing of it was written: no samples, no watermark, no WAN row, no event
    assert (await stored_rows(box.pk)) == {"box": [], "wan": 0}
    assert (
        await database_sync_to_async(lambda: BoxStatus.objects.filter(box=box, last_seq__gt=0).exists())()
        is False
    )
    assert await database_sync_to_async(lambda: WanStatus.objects.filter(box=box).exists())() is False
    assert await database_sync_to_async(lambda: Event.objects.filter(box=box).exists())() is False


async def test_each_value_lands_in_its_column(people: Any, box_factory: Any) -> None:
    # given a sample whose every value is distinct
    box = await database_sync_to_async(box_factory)(organization=people.org)
    ts = time.time() - 5
    link = {
        "iface": "wan7",
        "label": "Fibre 7",
        "kind": "vdsl",
        "up": True,
        "rtt_ms": 21.5,
        "jitter_ms": 3.25,
        "loss_pct": 1.5,
        "rx_bps": 7001,
        "tx_bps": 7002,
        "public_ip": "203.0.113.9",
        "subflows": 3,
    }
    values = {
        "ts": ts,
        "cpu_pct": 11.5,
        "mem_pct": 22.5,
        "load1": 0.75,
        "uptime_s": 4444,
        "tunnel_up": False,
        "conntrack": 555,
        "rx_bps": 6661,
        "tx_bps": 6662,
        "wans": [link],
    }
    writer = TelemetryWriter(flush_interval_ms=5)
    try:
        await writer.submit(
            box_id=box.pk, organization_id=people.org.pk, session_id="s", seq=9, samples=[values], dropped=17
        )
    finally:
        await writer.close()

    @database_sync_to_async
    def read() -> tuple[dict[str, Any], dict[str, Any]]:
        with connection.cursor() as cursor:
            rows = []
            for table in ("telemetry_box_sample", "telemetry_wan_sample"):
                cursor.execute(f"SELECT * FROM {table} WHERE box_id = %s", [box.pk])
                names = [column.name for column in cursor.description]
                rows.append(dict(zip(names, cursor.fetchone(), strict=True)))
        return rows[0], rows[1]

    box_row, wan_row = await read()
    # then each value is in the column of its name, in the samples...
    assert box_row["seq"] == 9 and box_row["idx"] == 0 and abs(box_row["ts"].timestamp() - ts) < 0.001
    assert {key: box_row[key] for key in ("cpu_pct", "mem_pct", "load1")} == {
        "cpu_pct": 11.5,
        "mem_pct": 22.5,
        "load1": 0.75,
    }
    assert (box_row["uptime_s"], box_row["tunnel_up"], box_row["conntrack"]) == (4444, False, 555)
    assert (box_row["rx_bps"], box_row["tx_bps"], box_row["wans_up"], box_row["wans_total"]) == (
        6661,
        6662,
        1,
        1,
    )
    assert (wan_row["seq"], wan_row["iface"], wan_row["kind"], wan_row["up"]) == (9, "wan7", "vdsl", True)
    assert (wan_row["rtt_ms"], wan_row["jitter_ms"], wan_row["loss_pct"]) == (21.5, 3.25, 1.5)
    assert (wan_row["rx_bps"], wan_row["tx_bps"], wan_row["subflows"]) == (7001, 7002, 3)
    # ...and in the live status rows
    status = await database_sync_to_async(BoxStatus.objects.get)(box=box)
    assert (status.last_seq, status.cpu_pct, status.mem_pct, status.load1, status.uptime_s) == (
        9,
        11.5,
        22.5,
        0.75,
        4444,
    )
    assert (status.tunnel_up, status.rx_bps, status.tx_bps, status.wans_up, status.wans_total) == (
        False,
        6661,
        6662,
        1,
        1,
    )
    assert status.dropped_samples == 17
    row = await database_sync_to_async(WanStatus.objects.get)(box=box, iface="wan7")
    assert (row.label, row.kind, row.up, row.rtt_ms, row.jitter_ms, row.loss_pct) == (
        "Fibre 7",
        "vdsl",
        True,
        21.5,
        3.25,
        1.5,
    )
    assert (row.rx_bps, row.tx_bps, row.public_ip, row.subflows) == (7001, 7002, "203.0.113.9", 3)
    assert row.degraded_since is None and abs(row.up_changed_at.timestamp() - ts) < 0.001


async def test_a_reading_that_leaves_up_to_the_stored_state_never_moves_the_link(
    people: Any, box_factory: Any
) -> None:
    # given (a stock OverTheBox box) a link its ifdown event set down, a link stored up, and no row for
    # two others: its metrics do not say whether a link is up ("up": None)
    box = await database_sync_to_async(box_factory)(organization=people.org)
    t0 = time.time() - 30

    def rows() -> None:
        from datetime import UTC, datetime

        at = datetime.fromtimestamp(t0, UTC)
        for iface, up in (("wan1", False), ("wan2", True)):
            WanStatus.objects.create(box=box, iface=iface, up=up, up_changed_at=at, updated_at=at)
        BoxStatus.objects.create(box=box, tunnel_up=False)  # its tun0 went down

    await database_sync_to_async(rows)()
    unknown = [
        {**wan("wan1"), "up": None},
        {**wan("wan2", rtt=None), "up": None},
        {**wan("wan3"), "up": None},  # new, with an RTT: up
        {**wan("wan4", rtt=None), "up": None},  # new, no RTT: down
    ]
    writer = TelemetryWriter(flush_interval_ms=5)
    try:
        # when its sample is stored
        stored = await writer.submit(
            box_id=box.pk,
            organization_id=people.org.pk,
            session_id="s",
            seq=1,
            samples=[{**sample(wans=unknown), "tunnel_up": None}],
        )
    finally:
        await writer.close()
    assert stored is True
    # then the stored links keep their state (no wan_up for the link its event set down), new links
    # start as their RTT says, and the samples hold the resolved state
    states = await database_sync_to_async(
        lambda: dict(WanStatus.objects.filter(box=box).values_list("iface", "up"))
    )()
    assert states == {"wan1": False, "wan2": True, "wan3": True, "wan4": False}
    kinds = await database_sync_to_async(
        lambda: sorted(Event.objects.filter(box=box).values_list("kind", "data__iface"))
    )()
    assert kinds == [("wan_down", "wan4")]

    def sample_states() -> dict[str, bool]:
        with connection.cursor() as cursor:
            cursor.execute("SELECT iface, up FROM telemetry_wan_sample WHERE box_id = %s", [box.pk])
            return dict(cursor.fetchall())

    assert await database_sync_to_async(sample_states)() == states
    status = await database_sync_to_async(BoxStatus.objects.get)(box=box)
    assert (status.wans_up, status.wans_total, status.tunnel_up) == (2, 4, False)

    def sample_tunnel() -> Any:
        with connection.cursor() as cursor:
            cursor.execute("SELECT tunnel_up FROM telemetry_box_sample WHERE box_id = %s", [box.pk])
            return cursor.fetchall()

    assert await database_sync_to_async(sample_tunnel)() == [(False,)]
