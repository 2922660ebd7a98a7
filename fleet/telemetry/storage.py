"""Storage maintenance of the telemetry tables: partitions, rollups, retention.

Partitions are daily for raw samples and 5-minute rollups, monthly for hourly rollups; each table has
a DEFAULT partition so a sample is never refused for want of a partition (``telemetry_ensure_partition``
moves such rows out of DEFAULT when their partition is created). Rollups are ``INSERT ... SELECT ...
GROUP BY ... ON CONFLICT DO UPDATE`` over closed buckets: idempotent and re-runnable; the watermark
row records how far they went and each run re-rolls ``ROLLUP_LOOKBACK_MINUTES`` before it so samples
that were in flight are counted. Samples older than that when stored (an agent flushing a day of
buffer, a clock behind) leave a ``StaleRollup`` mark per box and hour, written by the writer in their
transaction; each run consumes the marks and re-rolls those boxes' hours, within the raw retention.
Retention drops whole partitions.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from fleet.core.column_specs import ColumnSpec
from fleet.telemetry.models import RollupWatermark, StaleRollup
from fleet.telemetry.schema import (
    BOX_ROLLUP,
    BOX_ROLLUP_KEY,
    BOX_SAMPLE,
    ROLLUPS,
    WAN_ROLLUP,
    WAN_ROLLUP_KEY,
    WAN_SAMPLE,
)

BUCKET_5M = timedelta(minutes=5)
BUCKET_1H = timedelta(hours=1)
# A bucket is closed this long after its end (samples in flight, writer batches).
CLOSE_GRACE = timedelta(seconds=30)
# One statement aggregates at most this much raw time (bounded work per run).
MAX_ROLLUP_SPAN = timedelta(hours=6)
# Stale hours re-rolled per transaction, and transactions per run (the rest waits for the next run).
STALE_BATCH = 500
STALE_BATCHES_PER_RUN = 40

RAW_TABLES = (BOX_SAMPLE.table, WAN_SAMPLE.table)
ROLLUP_5M_TABLES = tuple(spec.table for spec in ROLLUPS["5m"])
ROLLUP_1H_TABLES = tuple(spec.table for spec in ROLLUPS["1h"])
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


def rollup_sql(
    target: ColumnSpec,
    *,
    key: tuple[str, ...],
    source: str,
    time: str,
    select: dict[str, str],
    stale_only: bool = False,
) -> str:
    """``INSERT INTO target ... SELECT <select> FROM source WHERE time in [start, end) GROUP BY key
    ON CONFLICT (key) DO UPDATE`` with every other column: ``select`` gives each column of the
    target's spec its expression, so the column list, the expressions and the update list cannot
    fall out of step. ``stale_only``: only the rows of the (box, hour) pairs given as the arrays
    ``%(boxes)s`` / ``%(hours)s`` (which must be distinct pairs), found through the (box, time)
    index of the source."""
    names = list(select)
    if names != target.names or names[: len(key)] != list(key):
        raise ValueError(f"the rollup of {target.table} must select {target.names}, key first")
    group = ", ".join(str(position) for position in range(1, len(key) + 1))
    updates = ", ".join(f"{name} = EXCLUDED.{name}" for name in names if name not in key)
    if stale_only:
        source = (
            "unnest(%(boxes)s::uuid[], %(hours)s::timestamptz[]) AS stale(stale_box, stale_hour)"
            f" JOIN {source} ON box_id = stale_box AND {time} >= stale_hour"
            f" AND {time} < stale_hour + interval '1 hour'"
        )
    return (
        f"INSERT INTO {target.table} ({target.column_list}) SELECT {', '.join(select.values())}"  # noqa: S608
        f" FROM {source} WHERE {time} >= %(start)s AND {time} < %(end)s GROUP BY {group}"
        f" ON CONFLICT ({', '.join(key)}) DO UPDATE SET {updates}"
    )


def _bucket_5m(column: str) -> str:
    return f"date_bin('5 minutes', {column}, TIMESTAMPTZ '1970-01-01 00:00:00+00')"


_box, _wan = BOX_SAMPLE.c, WAN_SAMPLE.c
BOX_5M: dict[str, Any] = dict(
    target=ROLLUPS["5m"][0],
    key=BOX_ROLLUP_KEY,
    source=BOX_SAMPLE.table,
    time=_box.ts,
    select={
        "box_id": _box.box_id,
        "bucket": _bucket_5m(_box.ts),
        "samples": "count(*)",
        "cpu_avg": f"avg({_box.cpu_pct})",
        "cpu_max": f"max({_box.cpu_pct})",
        "mem_avg": f"avg({_box.mem_pct})",
        "load_avg": f"avg({_box.load1})",
        "rx_avg": f"avg({_box.rx_bps})",
        "rx_max": f"max({_box.rx_bps})",
        "tx_avg": f"avg({_box.tx_bps})",
        "tx_max": f"max({_box.tx_bps})",
        "tunnel_up_samples": f"count(*) FILTER (WHERE {_box.tunnel_up})",
        "mem_free_avg": f"avg({_box.mem_free_kb})",
        "mem_free_min": f"min({_box.mem_free_kb})",
    },
)
WAN_5M: dict[str, Any] = dict(
    target=ROLLUPS["5m"][1],
    key=WAN_ROLLUP_KEY,
    source=WAN_SAMPLE.table,
    time=_wan.ts,
    select={
        "box_id": _wan.box_id,
        "iface": _wan.iface,
        "bucket": _bucket_5m(_wan.ts),
        "samples": "count(*)",
        "up_samples": f"count(*) FILTER (WHERE {_wan.up})",
        "rtt_count": f"count({_wan.rtt_ms})",
        "rtt_avg": f"avg({_wan.rtt_ms})",
        "rtt_max": f"max({_wan.rtt_ms})",
        "jitter_avg": f"avg({_wan.jitter_ms})",
        "loss_count": f"count({_wan.loss_pct})",
        "loss_avg": f"avg({_wan.loss_pct})",
        "rx_avg": f"avg({_wan.rx_bps})",
        "rx_max": f"max({_wan.rx_bps})",
        "tx_avg": f"avg({_wan.tx_bps})",
        "tx_max": f"max({_wan.tx_bps})",
    },
)
# Hourly rollups are weighted re-aggregations of the 5-minute ones.
_box5, _wan5 = BOX_ROLLUP.c, WAN_ROLLUP.c
BOX_1H: dict[str, Any] = dict(
    target=ROLLUPS["1h"][0],
    key=BOX_ROLLUP_KEY,
    source=ROLLUPS["5m"][0].table,
    time=_box5.bucket,
    select={
        "box_id": _box5.box_id,
        "bucket": f"date_trunc('hour', {_box5.bucket})",
        "samples": f"sum({_box5.samples})",
        "cpu_avg": f"sum({_box5.cpu_avg} * {_box5.samples}) / sum({_box5.samples})",
        "cpu_max": f"max({_box5.cpu_max})",
        "mem_avg": f"sum({_box5.mem_avg} * {_box5.samples}) / sum({_box5.samples})",
        "load_avg": f"sum({_box5.load_avg} * {_box5.samples}) / sum({_box5.samples})",
        "rx_avg": f"sum({_box5.rx_avg} * {_box5.samples}) / sum({_box5.samples})",
        "rx_max": f"max({_box5.rx_max})",
        "tx_avg": f"sum({_box5.tx_avg} * {_box5.samples}) / sum({_box5.samples})",
        "tx_max": f"max({_box5.tx_max})",
        "tunnel_up_samples": f"sum({_box5.tunnel_up_samples})",
        # Weighted by the samples of the buckets that have a value (null for an otb-agent box).
        "mem_free_avg": (
            f"sum({_box5.mem_free_avg} * {_box5.samples})"
            f" / NULLIF(sum({_box5.samples}) FILTER (WHERE {_box5.mem_free_avg} IS NOT NULL), 0)"
        ),
        "mem_free_min": f"min({_box5.mem_free_min})",
    },
)
WAN_1H: dict[str, Any] = dict(
    target=ROLLUPS["1h"][1],
    key=WAN_ROLLUP_KEY,
    source=ROLLUPS["5m"][1].table,
    time=_wan5.bucket,
    select={
        "box_id": _wan5.box_id,
        "iface": _wan5.iface,
        "bucket": f"date_trunc('hour', {_wan5.bucket})",
        "samples": f"sum({_wan5.samples})",
        "up_samples": f"sum({_wan5.up_samples})",
        "rtt_count": f"sum({_wan5.rtt_count})",
        "rtt_avg": f"sum({_wan5.rtt_avg} * {_wan5.rtt_count}) / NULLIF(sum({_wan5.rtt_count}), 0)",
        "rtt_max": f"max({_wan5.rtt_max})",
        "jitter_avg": (
            f"sum({_wan5.jitter_avg} * {_wan5.rtt_count})"
            f" / NULLIF(sum({_wan5.rtt_count}) FILTER (WHERE {_wan5.jitter_avg} IS NOT NULL), 0)"
        ),
        "loss_count": f"sum({_wan5.loss_count})",
        "loss_avg": f"sum({_wan5.loss_avg} * {_wan5.loss_count}) / NULLIF(sum({_wan5.loss_count}), 0)",
        "rx_avg": f"sum({_wan5.rx_avg} * {_wan5.samples}) / sum({_wan5.samples})",
        "rx_max": f"max({_wan5.rx_max})",
        "tx_avg": f"sum({_wan5.tx_avg} * {_wan5.samples}) / sum({_wan5.samples})",
        "tx_max": f"max({_wan5.tx_max})",
    },
)
BOX_5M_SQL, WAN_5M_SQL, BOX_1H_SQL, WAN_1H_SQL = (rollup_sql(**r) for r in (BOX_5M, WAN_5M, BOX_1H, WAN_1H))
# The same, for the stale hours of some boxes only.
BOX_5M_STALE_SQL, WAN_5M_STALE_SQL, BOX_1H_STALE_SQL, WAN_1H_STALE_SQL = (
    rollup_sql(**r, stale_only=True) for r in (BOX_5M, WAN_5M, BOX_1H, WAN_1H)
)
STALE_TAKE_SQL = (
    f"DELETE FROM {StaleRollup._meta.db_table} WHERE id IN (SELECT id FROM {StaleRollup._meta.db_table}"  # noqa: S608
    " ORDER BY hour, box_id LIMIT %s) RETURNING box_id, hour"
)


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


def _reroll_stale(*, now: datetime, through_5m: datetime) -> tuple[int, int]:
    """Consume up to ``STALE_BATCH`` stale-hour marks and re-roll those boxes' hours: their closed
    5-minute buckets (before ``through_5m``) from raw, then the hours the 5-minute rollups cover
    completely, from those. A mark older than the raw retention is dropped without a re-roll: its raw
    samples are (partly) gone, and recomputing would lose what the rollups hold. Returns (marks taken,
    rows written); the marks go only if the re-roll commits."""
    raw_cutoff = now - timedelta(days=cast(int, settings.OTB["RAW_RETENTION_DAYS"]))
    hour_end = _floor(through_5m, BUCKET_1H)
    written = 0
    with transaction.atomic(), connection.cursor() as cursor:
        # The same locks as the normal runs, in the same order: one roller of each rollup at a time.
        for name in ("5m", "1h"):
            cursor.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", [f"telemetry_rollup:{name}"])
        cursor.execute(STALE_TAKE_SQL, [STALE_BATCH])
        taken = cursor.fetchall()
        kept = sorted({(box_id, hour) for box_id, hour in taken if hour >= raw_cutoff})
        steps = (
            ((BOX_5M_STALE_SQL, WAN_5M_STALE_SQL), kept, through_5m),
            ((BOX_1H_STALE_SQL, WAN_1H_STALE_SQL), [pair for pair in kept if pair[1] < hour_end], hour_end),
        )
        for statements, pairs, end in steps:
            if not pairs:
                continue
            params = {
                "boxes": [box_id for box_id, _ in pairs],
                "hours": [hour for _, hour in pairs],
                "start": min(hour for _, hour in pairs),
                "end": end,
            }
            for statement in statements:
                cursor.execute(statement, params)
                written += cursor.rowcount
    return len(taken), written


def telemetry_rollup(*, now: datetime | None = None) -> dict[str, int]:
    """Roll closed buckets up: raw -> 5 minutes, then 5 minutes -> 1 hour; then re-roll the hours
    marked stale by late samples (bounded per run: what is left goes in the next). Idempotent."""
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
    stale_hours = written_stale = 0
    if through_5m is not None:
        for _ in range(STALE_BATCHES_PER_RUN):
            taken, written = _reroll_stale(now=now, through_5m=through_5m)
            stale_hours += taken
            written_stale += written
            if taken < STALE_BATCH:
                break
    return {"5m": written_5m, "1h": written_1h, "stale_hours": stale_hours, "stale": written_stale}


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
