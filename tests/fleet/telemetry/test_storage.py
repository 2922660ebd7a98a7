"""Partitions, rollups and retention of the telemetry tables (real PostgreSQL)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.db import connection
from django.utils import timezone

from fleet.telemetry.models import RollupWatermark
from fleet.telemetry.selectors import telemetry_plan, telemetry_series
from fleet.telemetry.storage import telemetry_partitions_ensure, telemetry_retention, telemetry_rollup

pytestmark = pytest.mark.django_db


def partitions_of(parent: str) -> set[str]:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = %s",
            [parent],
        )
        return {row[0] for row in cursor.fetchall()}


def insert_sample(
    box_id: Any, ts: datetime, *, seq: int = 1, idx: int = 0, cpu: float = 10.0, mem_free: int | None = None
) -> None:
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO telemetry_box_sample (box_id, seq, idx, ts, cpu_pct, mem_pct, load1, uptime_s,"
            " tunnel_up, conntrack, rx_bps, tx_bps, wans_up, wans_total, mem_free_kb)"
            " VALUES (%s, %s, %s, %s, %s, 50, 1, 1, true, 1, 1000, 100, 1, 1, %s)",
            [box_id, seq, idx, ts, cpu, mem_free],
        )


def mem_free_of(box_id: Any, ts: datetime) -> int | None:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT mem_free_kb FROM telemetry_box_sample WHERE box_id = %s AND ts = %s", [box_id, ts]
        )
        return cursor.fetchone()[0]


def insert_wan(
    box_id: Any, ts: datetime, *, up: bool, rtt: float | None, loss: float | None, rx: int = 1000
) -> None:
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO telemetry_wan_sample (box_id, seq, ts, iface, kind, up, rtt_ms, jitter_ms, loss_pct,"
            " rx_bps, tx_bps, subflows) VALUES (%s, 1, %s, 'wan1', 'fiber', %s, %s, 1, %s, %s, 10, 1)",
            [box_id, ts, up, rtt, loss, rx],
        )


def tablename_of(box_id: Any, ts: datetime) -> str:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT tableoid::regclass::text FROM telemetry_box_sample WHERE box_id = %s AND ts = %s",
            [box_id, ts],
        )
        return cursor.fetchone()[0]


def test_partitions_are_created_ahead_and_idempotently(box_factory: Any) -> None:
    # given a moment 20 days ahead (no partitions there yet)
    at = timezone.now() + timedelta(days=20)
    day = at.astimezone(UTC).strftime("%Y%m%d")
    # when partitions are ensured twice
    created = telemetry_partitions_ensure(days_ahead=2, at=at)
    again = telemetry_partitions_ensure(days_ahead=2, at=at)
    # then the raw and 5-minute daily partitions exist, and the second run creates none
    assert created >= 8
    assert again == 0
    assert f"telemetry_box_sample_p{day}" in partitions_of("telemetry_box_sample")
    assert f"telemetry_wan_rollup_5m_p{day}" in partitions_of("telemetry_wan_rollup_5m")
    assert f"telemetry_box_rollup_1h_p{at.astimezone(UTC):%Y%m}" in partitions_of("telemetry_box_rollup_1h")


def test_rows_in_default_move_into_a_new_partition(box_factory: Any) -> None:
    # given a sample stored before its day had a partition (it lands in DEFAULT)
    box = box_factory()
    at = timezone.now() + timedelta(days=40)
    insert_sample(box.pk, at, mem_free=1523400)
    assert tablename_of(box.pk, at) == "telemetry_box_sample_default"
    # when the partition of that day is created
    telemetry_partitions_ensure(days_ahead=0, at=at)
    # then the sample moved into it, not lost, its columns added since the table was made included
    assert tablename_of(box.pk, at) == f"telemetry_box_sample_p{at.astimezone(UTC):%Y%m%d}"
    assert mem_free_of(box.pk, at) == 1523400


def test_a_column_added_to_the_parent_is_on_every_partition(box_factory: Any) -> None:
    # given partitions made by the migrations and one made afterwards (LIKE the parent, then attached)
    box = box_factory()
    at = timezone.now() + timedelta(days=50)
    insert_sample(box.pk, at, mem_free=2048)
    telemetry_partitions_ensure(days_ahead=0, at=at)
    # then every partition of the samples and of both rollups has the free-memory columns
    with connection.cursor() as cursor:
        for parent, columns in (
            ("telemetry_box_sample", {"mem_free_kb"}),
            ("telemetry_box_rollup_5m", {"mem_free_avg", "mem_free_min"}),
            ("telemetry_box_rollup_1h", {"mem_free_avg", "mem_free_min"}),
        ):
            for partition in partitions_of(parent) | {parent}:
                cursor.execute(
                    "SELECT column_name FROM information_schema.columns WHERE table_name = %s", [partition]
                )
                assert columns <= {row[0] for row in cursor.fetchall()}, partition


def test_retention_drops_whole_old_partitions_only(box_factory: Any) -> None:
    box = box_factory()
    now = timezone.now()
    old = now - timedelta(days=10)
    telemetry_partitions_ensure(days_ahead=0, at=old)
    insert_sample(box.pk, old)
    insert_sample(box.pk, now, seq=2)
    insert_sample(box.pk, now - timedelta(days=30), seq=3)  # no partition: DEFAULT
    # when retention runs with raw retention of 7 days
    dropped = telemetry_retention(now=now)
    # then the raw partitions of 10 days ago are gone, today's and the 5-minute ones stay
    assert f"telemetry_box_sample_p{old.astimezone(UTC):%Y%m%d}" in dropped
    assert f"telemetry_box_rollup_5m_p{old.astimezone(UTC):%Y%m%d}" not in dropped
    assert f"telemetry_box_sample_p{now.astimezone(UTC):%Y%m%d}" in partitions_of("telemetry_box_sample")
    with connection.cursor() as cursor:
        cursor.execute("SELECT seq FROM telemetry_box_sample WHERE box_id = %s ORDER BY seq", [box.pk])
        assert [row[0] for row in cursor.fetchall()] == [2]


def test_rollups_aggregate_closed_buckets_and_are_idempotent(box_factory: Any) -> None:
    # given samples in two 5-minute buckets of an hour that is closed
    box = box_factory()
    now = timezone.now()
    hour = now.replace(minute=0, second=0, microsecond=0) - timedelta(hours=2)
    for i, (cpu, up, rtt, loss) in enumerate(
        [(10, True, 10.0, 0.0), (20, True, 20.0, 10.0), (30, False, None, None)]
    ):
        ts = hour + timedelta(seconds=10 * (i + 1))
        insert_sample(box.pk, ts, seq=i + 1, cpu=cpu, mem_free=[1000, 2000, None][i])
        insert_wan(box.pk, ts, up=up, rtt=rtt, loss=loss, rx=1000 * (i + 1))
    ts = hour + timedelta(minutes=5, seconds=5)
    insert_sample(box.pk, ts, seq=4, cpu=40, mem_free=4000)
    insert_wan(box.pk, ts, up=True, rtt=30.0, loss=0.0)

    # when the rollup runs twice
    first = telemetry_rollup(now=now)
    telemetry_rollup(now=now)

    # then the 5-minute rollups hold the exact aggregates
    assert first["5m"] >= 4
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT bucket, samples, cpu_avg, cpu_max, tunnel_up_samples FROM telemetry_box_rollup_5m"
            " WHERE box_id = %s ORDER BY bucket",
            [box.pk],
        )
        rows = cursor.fetchall()
        assert [(r[0], r[1], round(r[2], 3), r[3]) for r in rows] == [
            (hour, 3, 20.0, 30.0),
            (hour + timedelta(minutes=5), 1, 40.0, 40.0),
        ]
        # free memory: the average and the lowest of the samples that report it
        cursor.execute(
            "SELECT mem_free_avg, mem_free_min FROM telemetry_box_rollup_5m"
            " WHERE box_id = %s ORDER BY bucket",
            [box.pk],
        )
        assert cursor.fetchall() == [(1500.0, 1000), (4000.0, 4000)]
        cursor.execute(
            "SELECT samples, up_samples, rtt_count, rtt_avg, rtt_max, loss_avg, rx_avg, rx_max"
            " FROM telemetry_wan_rollup_5m WHERE box_id = %s AND bucket = %s",
            [box.pk, hour],
        )
        assert cursor.fetchone() == (3, 2, 2, 15.0, 20.0, 5.0, 2000.0, 3000)
        # and the hourly rollup is the weighted aggregate of the 5-minute ones
        cursor.execute(
            "SELECT samples, cpu_avg, cpu_max FROM telemetry_box_rollup_1h WHERE box_id = %s AND bucket = %s",
            [box.pk, hour],
        )
        assert cursor.fetchone() == (4, 25.0, 40.0)
        # weighted by the samples that reported free memory: (1500 * 3 + 4000) / 4
        cursor.execute(
            "SELECT mem_free_avg, mem_free_min FROM telemetry_box_rollup_1h WHERE box_id = %s", [box.pk]
        )
        assert cursor.fetchone() == (2125.0, 1000)
        cursor.execute(
            "SELECT samples, up_samples, rtt_avg, rtt_max FROM telemetry_wan_rollup_1h WHERE box_id = %s",
            [box.pk],
        )
        assert cursor.fetchone() == (4, 3, 20.0, 30.0)
    assert RollupWatermark.objects.get(name="5m").through > hour
    # and the series read from each resolution carry free memory (average, lowest)
    for resolution, max_points, expected in (
        ("raw", 2000, [(1000.0, 1000.0), (2000.0, 2000.0), (None, None), (4000.0, 4000.0)]),
        ("5m", 12, [(1500.0, 1000.0), (4000.0, 4000.0)]),
        ("1h", 1, [(2125.0, 1000.0)]),
    ):
        end = hour + timedelta(hours=1)
        plan = telemetry_plan(start=hour, end=end, resolution=resolution, max_points=max_points)
        assert plan.resolution == resolution
        points = telemetry_series(box_id=box.pk, plan=plan)["box"]
        assert [(p["mem_free_kb"], p["mem_free_min_kb"]) for p in points] == expected, resolution


def test_rollup_recounts_late_samples_within_the_lookback(box_factory: Any) -> None:
    box = box_factory()
    now = timezone.now()
    bucket = now.replace(second=0, microsecond=0) - timedelta(minutes=20)
    bucket -= timedelta(minutes=bucket.minute % 5)
    insert_sample(box.pk, bucket + timedelta(seconds=1), cpu=10)
    telemetry_rollup(now=now)
    # when a buffered sample of that bucket arrives later
    insert_sample(box.pk, bucket + timedelta(seconds=2), seq=2, cpu=30)
    telemetry_rollup(now=now + timedelta(minutes=1))
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT samples, cpu_avg FROM telemetry_box_rollup_5m WHERE box_id = %s AND bucket = %s",
            [box.pk, bucket],
        )
        assert cursor.fetchone() == (2, 20.0)
