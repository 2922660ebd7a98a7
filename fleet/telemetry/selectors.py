"""Reads of telemetry: the live status of a box and its WANs, and time series for charts."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

from django.db import connection
from django.db.models import Subquery

from fleet.core.errors import InvalidInput
from fleet.telemetry.models import BoxStatus, WanStatus
from fleet.telemetry.schema import BOX_ROLLUP, BOX_SAMPLE, ROLLUPS, WAN_ROLLUP, WAN_SAMPLE

RESOLUTIONS = ("raw", "5m", "1h")
NATIVE_STEP_S = {"raw": 1, "5m": 300, "1h": 3600}
DEFAULT_MAX_POINTS = 500
MAX_MAX_POINTS = 2000
MAX_SPAN = timedelta(days=800)
AUTO_RAW_UP_TO = timedelta(hours=6)
AUTO_5M_UP_TO = timedelta(days=14)


@dataclass(frozen=True)
class SeriesPlan:
    """Which table answers a series query and how wide its buckets are."""

    resolution: str
    bucket_s: int
    start: datetime
    end: datetime


def telemetry_plan(
    *, start: datetime, end: datetime, resolution: str = "auto", max_points: int | None = None
) -> SeriesPlan:
    """Choose the resolution and bucket width so that no series has more than ``max_points`` points.

    ``auto`` picks raw up to 6 h, 5-minute rollups up to 14 days, hourly beyond. A resolution whose
    buckets would have to be wider than the next coarser one is replaced by that coarser one.
    Raises InvalidInput naming ``from``, ``to``, ``resolution`` or ``max_points``.
    """
    if start >= end:
        raise InvalidInput("from must be before to", field="from")
    if end - start > MAX_SPAN:
        raise InvalidInput(f"the range may cover at most {MAX_SPAN.days} days", field="from")
    max_points = DEFAULT_MAX_POINTS if max_points is None else max_points
    if not 1 <= max_points <= MAX_MAX_POINTS:
        raise InvalidInput(f"max_points must be from 1 to {MAX_MAX_POINTS}", field="max_points")
    span = end - start
    if resolution == "auto":
        resolution = "raw" if span <= AUTO_RAW_UP_TO else "5m" if span <= AUTO_5M_UP_TO else "1h"
    if resolution not in RESOLUTIONS:
        raise InvalidInput("resolution must be raw, 5m, 1h or auto", field="resolution")
    span_s = span.total_seconds()
    needed = max(1, math.ceil(span_s / max_points))
    if resolution == "raw" and needed >= NATIVE_STEP_S["5m"]:
        resolution = "5m"
    if resolution == "5m" and needed >= NATIVE_STEP_S["1h"]:
        resolution = "1h"
    step = NATIVE_STEP_S[resolution]
    bucket_s = max(step, math.ceil(needed / step) * step)
    if resolution != "raw":
        epoch = datetime(1970, 1, 1, tzinfo=UTC)
        start = epoch + timedelta(seconds=((start - epoch).total_seconds() // step) * step)
        # Aligned buckets may need one more slot: widen so the count stays within max_points.
        while math.ceil((end - start).total_seconds() / bucket_s) > max_points:
            bucket_s += step
    return SeriesPlan(resolution=resolution, bucket_s=bucket_s, start=start, end=end)


_box, _wan, _box5, _wan5 = BOX_SAMPLE.c, WAN_SAMPLE.c, BOX_ROLLUP.c, WAN_ROLLUP.c
BOX_RAW_SQL = f"""
SELECT date_bin(%(bucket)s, {_box.ts}, %(start)s) AS t, count(*), avg({_box.cpu_pct}), max({_box.cpu_pct}),
    avg({_box.mem_pct}), avg({_box.load1}), avg({_box.rx_bps}), max({_box.rx_bps}), avg({_box.tx_bps}),
    max({_box.tx_bps}), avg({_box.tunnel_up}::int), avg({_box.mem_free_kb}), min({_box.mem_free_kb})
FROM {BOX_SAMPLE.table} WHERE {_box.box_id} = %(box)s AND {_box.ts} >= %(start)s AND {_box.ts} < %(end)s
GROUP BY 1 ORDER BY 1
"""  # noqa: S608 (identifiers from the schema module)
WAN_RAW_SQL = f"""
SELECT {_wan.iface}, date_bin(%(bucket)s, {_wan.ts}, %(start)s) AS t, count(*), avg({_wan.up}::int),
    avg({_wan.rtt_ms}), max({_wan.rtt_ms}), avg({_wan.jitter_ms}), avg({_wan.loss_pct}), avg({_wan.rx_bps}),
    max({_wan.rx_bps}), avg({_wan.tx_bps}), max({_wan.tx_bps})
FROM {WAN_SAMPLE.table} WHERE {_wan.box_id} = %(box)s AND {_wan.ts} >= %(start)s AND {_wan.ts} < %(end)s
GROUP BY 1, 2 ORDER BY 1, 2
"""  # noqa: S608
# The rollups re-aggregated into wider buckets, per resolution (weighted by the samples they hold).
BOX_ROLLUP_SQL = {
    resolution: f"""
SELECT date_bin(%(bucket)s, {_box5.bucket}, %(start)s) AS t, sum({_box5.samples}),
    sum({_box5.cpu_avg} * {_box5.samples}) / sum({_box5.samples}), max({_box5.cpu_max}),
    sum({_box5.mem_avg} * {_box5.samples}) / sum({_box5.samples}),
    sum({_box5.load_avg} * {_box5.samples}) / sum({_box5.samples}),
    sum({_box5.rx_avg} * {_box5.samples}) / sum({_box5.samples}), max({_box5.rx_max}),
    sum({_box5.tx_avg} * {_box5.samples}) / sum({_box5.samples}), max({_box5.tx_max}),
    sum({_box5.tunnel_up_samples})::float / sum({_box5.samples}),
    sum({_box5.mem_free_avg} * {_box5.samples})
        / NULLIF(sum({_box5.samples}) FILTER (WHERE {_box5.mem_free_avg} IS NOT NULL), 0),
    min({_box5.mem_free_min})
FROM {box.table} WHERE {_box5.box_id} = %(box)s AND {_box5.bucket} >= %(start)s AND {_box5.bucket} < %(end)s
GROUP BY 1 ORDER BY 1
"""  # noqa: S608
    for resolution, (box, _) in ROLLUPS.items()
}
WAN_ROLLUP_SQL = {
    resolution: f"""
SELECT {_wan5.iface}, date_bin(%(bucket)s, {_wan5.bucket}, %(start)s) AS t, sum({_wan5.samples}),
    sum({_wan5.up_samples})::float / sum({_wan5.samples}),
    sum({_wan5.rtt_avg} * {_wan5.rtt_count}) / NULLIF(sum({_wan5.rtt_count}), 0), max({_wan5.rtt_max}),
    sum({_wan5.jitter_avg} * {_wan5.rtt_count}) / NULLIF(sum({_wan5.rtt_count}), 0),
    sum({_wan5.loss_avg} * {_wan5.loss_count}) / NULLIF(sum({_wan5.loss_count}), 0),
    sum({_wan5.rx_avg} * {_wan5.samples}) / sum({_wan5.samples}), max({_wan5.rx_max}),
    sum({_wan5.tx_avg} * {_wan5.samples}) / sum({_wan5.samples}), max({_wan5.tx_max})
FROM {wan.table} WHERE {_wan5.box_id} = %(box)s AND {_wan5.bucket} >= %(start)s AND {_wan5.bucket} < %(end)s
GROUP BY 1, 2 ORDER BY 1, 2
"""  # noqa: S608
    for resolution, (_, wan) in ROLLUPS.items()
}


def _num(value: Any) -> float | None:
    """A value of a series: null when absent or not a finite number (a NaN or an infinity stored
    before the protocol bounded every number must not make the series unreadable)."""
    if value is None:
        return None
    number = float(value)
    return round(number, 3) if math.isfinite(number) else None


def telemetry_series(*, box_id: UUID, plan: SeriesPlan) -> dict[str, Any]:
    """Box and per-WAN series over the plan's range (two queries)."""
    params: dict[str, Any] = {
        "bucket": timedelta(seconds=plan.bucket_s),
        "start": plan.start,
        "end": plan.end,
        "box": box_id,
    }
    if plan.resolution == "raw":
        box_sql, wan_sql = BOX_RAW_SQL, WAN_RAW_SQL
    else:
        box_sql, wan_sql = BOX_ROLLUP_SQL[plan.resolution], WAN_ROLLUP_SQL[plan.resolution]
    with connection.cursor() as cursor:
        cursor.execute(box_sql, params)
        box_points = [
            {
                "ts": row[0].isoformat(),
                "samples": int(row[1]),
                "cpu_pct": _num(row[2]),
                "cpu_max_pct": _num(row[3]),
                "mem_pct": _num(row[4]),
                "load1": _num(row[5]),
                "rx_bps": _num(row[6]),
                "rx_max_bps": _num(row[7]),
                "tx_bps": _num(row[8]),
                "tx_max_bps": _num(row[9]),
                "tunnel_up_ratio": _num(row[10]),
                "mem_free_kb": _num(row[11]),
                "mem_free_min_kb": _num(row[12]),
            }
            for row in cursor.fetchall()
        ]
        cursor.execute(wan_sql, params)
        wans: dict[str, list[dict[str, Any]]] = {}
        for row in cursor.fetchall():
            wans.setdefault(row[0], []).append(
                {
                    "ts": row[1].isoformat(),
                    "samples": int(row[2]),
                    "up_ratio": _num(row[3]),
                    "rtt_ms": _num(row[4]),
                    "rtt_max_ms": _num(row[5]),
                    "jitter_ms": _num(row[6]),
                    "loss_pct": _num(row[7]),
                    "rx_bps": _num(row[8]),
                    "rx_max_bps": _num(row[9]),
                    "tx_bps": _num(row[10]),
                    "tx_max_bps": _num(row[11]),
                }
            )
    return {
        "box_id": str(box_id),
        "from": plan.start.isoformat(),
        "to": plan.end.isoformat(),
        "resolution": plan.resolution,
        "bucket_s": plan.bucket_s,
        "box": box_points,
        "wans": [{"iface": iface, "points": points} for iface, points in sorted(wans.items())],
    }


def box_live_status(*, box_id: UUID) -> tuple[BoxStatus | None, list[WanStatus]]:
    """The box's live status row (None if it never connected) and its WAN rows, in two queries."""
    status = BoxStatus.objects.filter(box_id=box_id).first()
    return status, box_wans(box_id=box_id)


def box_wans(*, box_id: UUID) -> list[WanStatus]:
    """The WAN links of the box's latest report, by interface name (one query). The writer stamps
    every link of a report with the same ``updated_at``; a link the box stopped reporting (disabled
    by its WAN policy, unplugged) keeps its row with an older stamp and is not listed."""
    latest = WanStatus.objects.filter(box_id=box_id).order_by("-updated_at").values("updated_at")[:1]
    return list(WanStatus.objects.filter(box_id=box_id, updated_at=Subquery(latest)).order_by("iface"))
