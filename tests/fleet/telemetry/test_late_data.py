"""Late and skewed samples through the real session, writer, PostgreSQL and the Celery task functions
(issue #14 item 9): late samples are rolled up whenever they arrive (within the raw retention), a
clock behind is trusted, a clock ahead beyond the tolerance is replaced by the receive time."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from channels.db import database_sync_to_async
from django.db import connection
from django.utils import timezone

from fleet.core.models import Box
from fleet.live.gate import close_session_gate
from fleet.telemetry.models import RollupWatermark, StaleRollup
from fleet.telemetry.storage import BUCKET_5M, CLOSE_GRACE, telemetry_rollup
from fleet.telemetry.tasks import telemetry_rollup_task
from fleet.telemetry.writer import MAX_FUTURE_S, close_writer
from tests.fleet.live.test_agent import open_session, sample, telemetry, wan

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.asyncio]

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@pytest.fixture(autouse=True)
async def _writer_closed() -> Any:
    yield
    await close_writer()
    await close_session_gate()


@pytest.fixture
def agent_box(people: Any, box_factory: Any, agent_token_factory: Any) -> tuple[Box, str]:
    box = box_factory(organization=people.org, config_hash="c" * 64)
    return box, agent_token_factory(box)


def floor(moment: datetime, step: timedelta) -> datetime:
    return EPOCH + ((moment - EPOCH) // step) * step


async def send_samples(token: str, times: list[float], *, first_seq: int = 1) -> None:
    """One session sending a sample (one WAN) at each of ``times``, 60 per frame, as an agent flushing
    its buffer does; every frame is acked."""
    communicator, _ = await open_session(token)
    seq = first_seq
    for start in range(0, len(times), 60):
        batch = [sample(ts, [wan("wan1")]) for ts in times[start : start + 60]]
        await communicator.send_json_to(telemetry(seq, batch))
        assert await communicator.receive_json_from(timeout=10) == {"type": "ack", "seq": seq}
        seq += 1
    await communicator.disconnect(timeout=5)


@database_sync_to_async
def rollup_rows(box_id: Any, resolution: str) -> dict[datetime, tuple[int, int]]:
    """bucket -> (box samples, WAN samples) of the box's rollups at ``resolution``."""
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT b.bucket, b.samples, w.samples FROM telemetry_box_rollup_{resolution} b"
            f" JOIN telemetry_wan_rollup_{resolution} w ON w.box_id = b.box_id AND w.bucket = b.bucket"
            " WHERE b.box_id = %s",
            [box_id],
        )
        return {row[0]: (row[1], row[2]) for row in cursor.fetchall()}


@database_sync_to_async
def stored_times(box_id: Any) -> list[datetime]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT ts FROM telemetry_box_sample WHERE box_id = %s ORDER BY ts", [box_id])
        return [row[0] for row in cursor.fetchall()]


async def test_a_box_back_after_a_day_offline_is_rolled_up_for_the_whole_day(
    agent_box: tuple[Box, str], people: Any, client_for: Any
) -> None:
    # given rollups that have been running (their watermark is now)
    box, token = agent_box
    await database_sync_to_async(telemetry_rollup_task)()
    assert await database_sync_to_async(RollupWatermark.objects.filter(name="5m").exists)()
    # when the box comes back after 24 h offline and flushes a sample a minute for the whole day
    now = time.time()
    times = [now - 86400 + 60 * i for i in range(1440)]
    await send_samples(token, times)
    # and the rollup task runs
    await database_sync_to_async(telemetry_rollup_task)()
    # then every closed 5-minute bucket of the day holds its samples, box and WAN
    rolled_until = floor(datetime.fromtimestamp(now, UTC) - CLOSE_GRACE, BUCKET_5M)
    expected_5m: dict[datetime, int] = {}
    for ts in times:
        bucket = floor(datetime.fromtimestamp(ts, UTC), BUCKET_5M)
        if bucket + BUCKET_5M <= rolled_until:
            expected_5m[bucket] = expected_5m.get(bucket, 0) + 1
    rows_5m = await rollup_rows(box.pk, "5m")
    assert len(expected_5m) >= 285
    assert {bucket: rows_5m.get(bucket) for bucket in expected_5m} == {
        bucket: (count, count) for bucket, count in expected_5m.items()
    }
    # and every closed hour of the day holds its samples
    hour = timedelta(hours=1)
    expected_1h: dict[datetime, int] = {}
    for bucket, count in expected_5m.items():
        if floor(bucket, hour) + hour <= floor(rolled_until, hour):
            expected_1h[floor(bucket, hour)] = expected_1h.get(floor(bucket, hour), 0) + count
    rows_1h = await rollup_rows(box.pk, "1h")
    assert len(expected_1h) >= 23
    assert {bucket: rows_1h.get(bucket) for bucket in expected_1h} == {
        bucket: (count, count) for bucket, count in expected_1h.items()
    }
    # and the marks the writer left for the rollup are consumed
    assert not await database_sync_to_async(StaleRollup.objects.filter(box=box).exists)()
    # and the day reads at 5-minute and hourly resolution through the API
    client = await database_sync_to_async(client_for)(people.viewer)
    start = datetime.fromtimestamp(now - 86400, UTC).isoformat()
    for resolution, points in (("5m", 285), ("1h", 23)):
        response = await database_sync_to_async(client.get)(
            f"/api/v1/boxes/{box.pk}/telemetry",
            {"from": start, "resolution": resolution, "max_points": 2000},
        )
        assert response.status_code == 200, response.content
        assert len([point for point in response.json()["box"] if point["samples"]]) >= points, resolution


async def test_a_re_roll_is_idempotent(agent_box: tuple[Box, str]) -> None:
    # given late samples rolled up once
    box, token = agent_box
    await database_sync_to_async(telemetry_rollup_task)()
    now = time.time()
    await send_samples(token, [now - 3 * 3600 + 10 * i for i in range(30)])
    await database_sync_to_async(telemetry_rollup_task)()
    first = await rollup_rows(box.pk, "5m"), await rollup_rows(box.pk, "1h")
    # when the same hours are marked again and rolled again (a redelivered mark, a second run)
    await database_sync_to_async(_mark_every_hour_of)(box)
    await database_sync_to_async(telemetry_rollup_task)()
    # then the rollups are the same
    assert (await rollup_rows(box.pk, "5m"), await rollup_rows(box.pk, "1h")) == first
    assert sum(samples for samples, _ in first[0].values()) == 30


def _mark_every_hour_of(box: Box) -> None:
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO telemetry_stalerollup (box_id, hour) SELECT DISTINCT box_id,"
            " date_bin('1 hour', ts, TIMESTAMPTZ '1970-01-01 00:00:00+00') FROM telemetry_box_sample"
            " WHERE box_id = %s ON CONFLICT DO NOTHING",
            [box.pk],
        )


async def test_a_late_sample_older_than_the_raw_retention_leaves_the_rollups_as_they_are(
    agent_box: tuple[Box, str], settings: Any
) -> None:
    # given a 5-minute rollup of 10 days ago, whose raw samples the retention has removed
    box, token = agent_box
    await database_sync_to_async(telemetry_rollup_task)()
    old = floor(timezone.now() - timedelta(days=10), timedelta(hours=1))

    def insert_rollup() -> None:
        with connection.cursor() as cursor:
            cursor.execute(
                "INSERT INTO telemetry_box_rollup_5m (box_id, bucket, samples, cpu_avg, cpu_max, mem_avg,"
                " load_avg, rx_avg, rx_max, tx_avg, tx_max, tunnel_up_samples)"
                " VALUES (%s, %s, 30, 50, 90, 40, 1, 1000, 2000, 500, 900, 30)",
                [box.pk, old],
            )

    await database_sync_to_async(insert_rollup)()
    # when a sample of that bucket arrives now (a clock 10 days behind, or a very long buffer)
    await send_samples(token, [old.timestamp() + 1])
    await database_sync_to_async(telemetry_rollup_task)()
    # then the rollup is not recomputed from the one raw sample left (it would lose the 30 it holds)
    rows = await rollup_rows_box_only(box.pk, old)
    assert rows == (30, 50.0)
    # and the mark is dropped
    assert not await database_sync_to_async(StaleRollup.objects.filter(box=box).exists)()


@database_sync_to_async
def rollup_rows_box_only(box_id: Any, bucket: datetime) -> tuple[int, float]:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT samples, cpu_avg FROM telemetry_box_rollup_5m WHERE box_id = %s AND bucket = %s",
            [box_id, bucket],
        )
        return cursor.fetchone()


async def test_a_clock_hours_behind_is_trusted_and_rolled_up_where_it_says(
    agent_box: tuple[Box, str],
) -> None:
    # given rollups that have been running
    box, token = agent_box
    await database_sync_to_async(telemetry_rollup_task)()
    # when a box whose clock is 3 hours behind streams samples (each sent as it is taken)
    now = time.time()
    skewed = [now - 3 * 3600 + 10 * i for i in range(6)]
    await send_samples(token, skewed[:3])
    await send_samples(token, skewed[3:], first_seq=2)
    # then they are stored at the times the box gave
    assert [ts.timestamp() for ts in await stored_times(box.pk)] == pytest.approx(skewed)
    # and the next run rolls them up 3 hours back, although that is past the rollups' lookback
    await database_sync_to_async(telemetry_rollup_task)()
    rows_5m = await rollup_rows(box.pk, "5m")
    assert sum(samples for samples, _ in rows_5m.values()) == 6
    assert min(rows_5m) == floor(datetime.fromtimestamp(skewed[0], UTC), BUCKET_5M)
    rows_1h = await rollup_rows(box.pk, "1h")
    assert sum(samples for samples, _ in rows_1h.values()) == 6


@pytest.mark.parametrize("ahead_s", [3 * 3600, 30 * 86400, MAX_FUTURE_S + 60])
async def test_a_clock_ahead_beyond_the_tolerance_is_stored_at_the_receive_time(
    agent_box: tuple[Box, str], ahead_s: float
) -> None:
    # given a box whose clock is ahead of the server's by more than the tolerance (5 minutes)
    box, token = agent_box
    # when it sends samples
    before = time.time()
    await send_samples(token, [before + ahead_s, before + ahead_s + 10])
    after = time.time()
    # then they are acked and stored at the time the server received them
    stored = [ts.timestamp() for ts in await stored_times(box.pk)]
    assert len(stored) == 2
    assert all(before - 1 <= ts <= after + 1 for ts in stored), (stored, before, after)
    # and they are rolled up there, with the rest of the fleet's samples
    await database_sync_to_async(telemetry_rollup)(now=timezone.now() + timedelta(minutes=10))
    rows_5m = await rollup_rows(box.pk, "5m")
    assert sum(samples for samples, _ in rows_5m.values()) == 2
    assert min(rows_5m) == floor(datetime.fromtimestamp(before, UTC), BUCKET_5M)


async def test_a_clock_slightly_ahead_within_the_tolerance_is_trusted(agent_box: tuple[Box, str]) -> None:
    box, token = agent_box
    ahead = time.time() + MAX_FUTURE_S - 60
    await send_samples(token, [ahead])
    assert [ts.timestamp() for ts in await stored_times(box.pk)] == pytest.approx([ahead])


async def test_a_clock_before_2000_is_stored_at_the_receive_time(agent_box: tuple[Box, str]) -> None:
    # a box without a real-time clock, before NTP: its clock says 1970
    box, token = agent_box
    before = time.time()
    await send_samples(token, [1000.0])
    [stored] = [ts.timestamp() for ts in await stored_times(box.pk)]
    assert before - 1 <= stored <= time.time() + 1
