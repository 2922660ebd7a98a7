"""Storage maintenance of the telemetry tables: partitions, rollups, retention.

Partitions are daily for raw samples and 5-minute rollups, monthly for hourly rollups; each table has
a DEFAULT partition so a sample is never refused for want of a partition (``telemetry_ensure_partition``
moves such rows out of DEFAULT when their partition is created). Rollups are ``INSERT ... SELECT ...
GROUP BY ... ON CONFLICT DO UPDATE`` over closed buckets: idempotent and re-runnable; the watermark
row records how far they went and each run re-rolls ``ROLLUP_LOOKBACK_MINUTES`` before it so late
samples (an agent flushing its buffer) are counted. Retention drops whole partitions.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import cast

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from fleet.telemetry.models import RollupWatermark

BUCKET_5M = timedelta(minutes=5)
BUCKET_1H = timedelta(hours=1)
# A bucket is closed this long after its end (samples in flight, writer batches).
CLOSE_GRACE = timedelta(seconds=30)
# One statement aggregates at most this much raw time (bounded work per run).
MAX_ROLLUP_SPAN = timedelta(hours=6)

RAW_TABLES = ("telemetry_box_sample", "telemetry_wan_sample")
ROLLUP_5M_TABLES = ("telemetry_box_rollup_5m", "telemetry_wan_rollup_5m")
ROLLUP_1H_TABLES = ("telemetry_box_rollup_1h", "telemetry_wan_rollup_1h")
_PARTITION_NAME = re.compile(r"^(?P<parent>telemetry_[a-z0-9_]+)_p(?P<stamp>\d{6}|\d{8})$")


def telemetry_partitions_ensure(*, days_ahead: int = 3, at: datetime | None = None) -> int:
    """Create the partitions from yesterday to ``days_ahead`` days ahead (monthly ones for hourly
    rollups); returns how many were created. Safe to run concurrently and repeatedly."""
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SELECT telemetry_ensure_partitions(%s, %s)", [days_ahead, at or timezone.now()])
        return int(cursor.fetchone()[0])


def _floor(moment: datetime, step: timedelta) -> datetime:
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    return epoch + ((moment - epoch) // step) * step


BOX_5M_SQL = """
INSERT INTO telemetry_box_rollup_5m AS r (box_id, bucket, samples, cpu_avg, cpu_max, mem_avg, load_avg,
    rx_avg, rx_max, tx_avg, tx_max, tunnel_up_samples)
SELECT box_id, date_bin('5 minutes', ts, TIMESTAMPTZ '1970-01-01 00:00:00+00'), count(*), avg(cpu_pct),
    max(cpu_pct), avg(mem_pct), avg(load1), avg(rx_bps), max(rx_bps), avg(tx_bps), max(tx_bps),
    count(*) FILTER (WHERE tunnel_up)
FROM telemetry_box_sample WHERE ts >= %(start)s AND ts < %(end)s
GROUP BY 1, 2
ON CONFLICT (box_id, bucket) DO UPDATE SET samples = EXCLUDED.samples, cpu_avg = EXCLUDED.cpu_avg,
    cpu_max = EXCLUDED.cpu_max, mem_avg = EXCLUDED.mem_avg, load_avg = EXCLUDED.load_avg,
    rx_avg = EXCLUDED.rx_avg, rx_max = EXCLUDED.rx_max, tx_avg = EXCLUDED.tx_avg, tx_max = EXCLUDED.tx_max,
    tunnel_up_samples = EXCLUDED.tunnel_up_samples
"""
WAN_5M_SQL = """
INSERT INTO telemetry_wan_rollup_5m AS r (box_id, iface, bucket, samples, up_samples, rtt_count, rtt_avg,
    rtt_max, jitter_avg, loss_count, loss_avg, rx_avg, rx_max, tx_avg, tx_max)
SELECT box_id, iface, date_bin('5 minutes', ts, TIMESTAMPTZ '1970-01-01 00:00:00+00'), count(*),
    count(*) FILTER (WHERE up), count(rtt_ms), avg(rtt_ms), max(rtt_ms), avg(jitter_ms), count(loss_pct),
    avg(loss_pct), avg(rx_bps), max(rx_bps), avg(tx_bps), max(tx_bps)
FROM telemetry_wan_sample WHERE ts >= %(start)s AND ts < %(end)s
GROUP BY 1, 2, 3
ON CONFLICT (box_id, iface, bucket) DO UPDATE SET samples = EXCLUDED.samples,
    up_samples = EXCLUDED.up_samples, rtt_count = EXCLUDED.rtt_count, rtt_avg = EXCLUDED.rtt_avg,
    rtt_max = EXCLUDED.rtt_max, jitter_avg = EXCLUDED.jitter_avg, loss_count = EXCLUDED.loss_count,
    loss_avg = EXCLUDED.loss_avg, rx_avg = EXCLUDED.rx_avg, rx_max = EXCLUDED.rx_max,
    tx_avg = EXCLUDED.tx_avg, tx_max = EXCLUDED.tx_max
"""
# Hourly rollups are weighted re-aggregations of the 5-minute ones.
BOX_1H_SQL = """
INSERT INTO telemetry_box_rollup_1h AS r (box_id, bucket, samples, cpu_avg, cpu_max, mem_avg, load_avg,
    rx_avg, rx_max, tx_avg, tx_max, tunnel_up_samples)
SELECT box_id, date_trunc('hour', bucket), sum(samples),
    sum(cpu_avg * samples) / sum(samples), max(cpu_max), sum(mem_avg * samples) / sum(samples),
    sum(load_avg * samples) / sum(samples), sum(rx_avg * samples) / sum(samples), max(rx_max),
    sum(tx_avg * samples) / sum(samples), max(tx_max), sum(tunnel_up_samples)
FROM telemetry_box_rollup_5m WHERE bucket >= %(start)s AND bucket < %(end)s
GROUP BY 1, 2
ON CONFLICT (box_id, bucket) DO UPDATE SET samples = EXCLUDED.samples, cpu_avg = EXCLUDED.cpu_avg,
    cpu_max = EXCLUDED.cpu_max, mem_avg = EXCLUDED.mem_avg, load_avg = EXCLUDED.load_avg,
    rx_avg = EXCLUDED.rx_avg, rx_max = EXCLUDED.rx_max, tx_avg = EXCLUDED.tx_avg, tx_max = EXCLUDED.tx_max,
    tunnel_up_samples = EXCLUDED.tunnel_up_samples
"""
WAN_1H_SQL = """
INSERT INTO telemetry_wan_rollup_1h AS r (box_id, iface, bucket, samples, up_samples, rtt_count, rtt_avg,
    rtt_max, jitter_avg, loss_count, loss_avg, rx_avg, rx_max, tx_avg, tx_max)
SELECT box_id, iface, date_trunc('hour', bucket), sum(samples), sum(up_samples), sum(rtt_count),
    sum(rtt_avg * rtt_count) / NULLIF(sum(rtt_count), 0), max(rtt_max),
    sum(jitter_avg * rtt_count) / NULLIF(sum(rtt_count) FILTER (WHERE jitter_avg IS NOT NULL), 0),
    sum(loss_count), sum(loss_avg * loss_count) / NULLIF(sum(loss_count), 0),
    sum(rx_avg * samples) / sum(samples), max(rx_max), sum(tx_avg * samples) / sum(samples), max(tx_max)
FROM telemetry_wan_rollup_5m WHERE bucket >= %(start)s AND bucket < %(end)s
GROUP BY 1, 2, 3
ON CONFLICT (box_id, iface, bucket) DO UPDATE SET samples = EXCLUDED.samples,
    up_samples = EXCLUDED.up_samples, rtt_count = EXCLUDED.rtt_count, rtt_avg = EXCLUDED.rtt_avg,
    rtt_max = EXCLUDED.rtt_max, jitter_avg = EXCLUDED.jitter_avg, loss_count = EXCLUDED.loss_count,
    loss_avg = EXCLUDED.loss_avg, rx_avg = EXCLUDED.rx_avg, rx_max = EXCLUDED.rx_max,
    tx_avg = EXCLUDED.tx_avg, tx_max = EXCLUDED.tx_max
"""


def _roll(
    name: str, step: timedelta, statements: tuple[str, str], end: datetime, first_start: datetime
) -> int:
    """Aggregate [watermark - lookback, end) in spans of MAX_ROLLUP_SPAN; returns rows written."""
    lookback = timedelta(minutes=cast(int, settings.OTB.get("ROLLUP_LOOKBACK_MINUTES", 60)))
    written = 0
    with transaction.atomic():
        with connection.cursor() as cursor:
            # One roller at a time per rollup (beat may overlap a slow run).
            cursor.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", [f"telemetry_rollup:{name}"])
        watermark = RollupWatermark.objects.select_for_update().filter(name=name).first()
        start = _floor(watermark.through - lookback, step) if watermark else first_start
        end = _floor(end, step)
        cursor_start = start
        with connection.cursor() as cursor:
            while cursor_start < end:
                span_end = min(end, cursor_start + MAX_ROLLUP_SPAN)
                for statement in statements:
                    cursor.execute(statement, {"start": cursor_start, "end": span_end})
                    written += cursor.rowcount
                cursor_start = span_end
        if end > start:
            RollupWatermark.objects.update_or_create(name=name, defaults={"through": max(end, start)})
    return written


def telemetry_rollup(*, now: datetime | None = None) -> dict[str, int]:
    """Roll closed buckets up: raw -> 5 minutes, then 5 minutes -> 1 hour. Idempotent."""
    now = now or timezone.now()
    raw_days = cast(int, settings.OTB["RAW_RETENTION_DAYS"])
    written_5m = _roll(
        "5m",
        BUCKET_5M,
        (BOX_5M_SQL, WAN_5M_SQL),
        end=now - CLOSE_GRACE,
        first_start=_floor(now - timedelta(days=raw_days), BUCKET_5M),
    )
    through_5m = RollupWatermark.objects.filter(name="5m").values_list("through", flat=True).first()
    written_1h = 0
    if through_5m is not None:
        written_1h = _roll(
            "1h",
            BUCKET_1H,
            (BOX_1H_SQL, WAN_1H_SQL),
            end=through_5m,
            first_start=_floor(now - timedelta(days=raw_days), BUCKET_1H),
        )
    return {"5m": written_5m, "1h": written_1h}


def _partitions() -> list[tuple[str, str, datetime]]:
    """(parent, partition, start) of every dated partition of the telemetry tables."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname LIKE 'telemetry\\_%%'"
        )
        names = [row[0] for row in cursor.fetchall()]
    found = []
    for name in names:
        match = _PARTITION_NAME.match(name)
        if not match:
            continue
        stamp = match["stamp"]
        fmt = "%Y%m%d" if len(stamp) == 8 else "%Y%m"
        found.append((match["parent"], name, datetime.strptime(stamp, fmt).replace(tzinfo=UTC)))
    return found


def _partition_end(start: datetime, monthly: bool) -> datetime:
    if not monthly:
        return start + timedelta(days=1)
    return (start + timedelta(days=32)).replace(day=1)


def telemetry_retention(*, now: datetime | None = None) -> list[str]:
    """Drop the partitions entirely older than their retention (raw, 5m, 1h) and purge the DEFAULT
    partitions of rows that old; returns the dropped partition names."""
    now = now or timezone.now()
    otb = cast(dict[str, int], settings.OTB)
    cutoffs = {
        **dict.fromkeys(RAW_TABLES, now - timedelta(days=otb["RAW_RETENTION_DAYS"])),
        **dict.fromkeys(ROLLUP_5M_TABLES, now - timedelta(days=otb["ROLLUP_5M_RETENTION_DAYS"])),
        **dict.fromkeys(ROLLUP_1H_TABLES, now - timedelta(days=otb["ROLLUP_1H_RETENTION_DAYS"])),
    }
    dropped = []
    for parent, name, start in sorted(_partitions()):
        if parent not in cutoffs:
            continue
        if _partition_end(start, parent in ROLLUP_1H_TABLES) <= cutoffs[parent]:
            with transaction.atomic(), connection.cursor() as cursor:
                cursor.execute(f'DROP TABLE IF EXISTS "{name}"')
            dropped.append(name)
    with transaction.atomic(), connection.cursor() as cursor:
        for parent, cutoff in cutoffs.items():
            key = "ts" if parent in RAW_TABLES else "bucket"
            # parent and key come from the constants above, never from input.
            cursor.execute(f'DELETE FROM "{parent}_default" WHERE "{key}" < %s', [cutoff])  # noqa: S608
    return dropped
