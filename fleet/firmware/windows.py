"""Maintenance windows: the weekday/hours rule in Python (previews, the portal) and the same rule in
SQL (dispatch, where it filters thousands of rows at once). Both read ``BoxUpgradePolicy`` with the
defaults of ``fleet.firmware.models``; keep them in step (tests/fleet/firmware/test_windows.py
checks that they agree)."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from fleet.firmware.models import DEFAULT_WINDOW_DAYS, DEFAULT_WINDOW_END, DEFAULT_WINDOW_START


def _zone(name: str) -> dt.tzinfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return dt.UTC


def in_window(
    now: dt.datetime,
    timezone_name: str,
    days: list[int] | None = None,
    start: dt.time | None = None,
    end: dt.time | None = None,
) -> bool:
    """Whether ``now`` (aware) falls in the window, read in the organisation's time zone."""
    days = DEFAULT_WINDOW_DAYS if days is None else days
    start = DEFAULT_WINDOW_START if start is None else start
    end = DEFAULT_WINDOW_END if end is None else end
    local = now.astimezone(_zone(timezone_name))
    weekday, clock = local.weekday(), local.time().replace(tzinfo=None)
    if start == end:
        return weekday in days
    if start < end:
        return weekday in days and start <= clock < end
    # the window runs past midnight: it belongs to the day it started on
    return (clock >= start and weekday in days) or (clock < end and (weekday - 1) % 7 in days)


def window_sql(now_param: str = "%(now)s") -> str:
    """The window test as a SQL boolean over ``o`` (organisation) and ``p`` (policy, may be NULL);
    ``%`` is doubled for a parameterised query."""
    # An unknown zone name in the organisation row must not break dispatch: read it as UTC.
    zone = "(CASE WHEN o.timezone IN (SELECT name FROM pg_timezone_names) THEN o.timezone ELSE 'UTC' END)"
    local = f"({now_param}::timestamptz AT TIME ZONE {zone})"
    dow = f"((EXTRACT(ISODOW FROM {local})::int + 6) %% 7)"
    clock = f"({local})::time"
    days = "COALESCE(p.window_days, ARRAY[0,1,2,3,4,5,6]::smallint[])::int[]"
    start = f"COALESCE(p.window_start, '{DEFAULT_WINDOW_START.isoformat()}'::time)"
    end = f"COALESCE(p.window_end, '{DEFAULT_WINDOW_END.isoformat()}'::time)"
    return f"""(
      ({start} = {end} AND {dow} = ANY({days}))
      OR ({start} < {end} AND {dow} = ANY({days}) AND {clock} >= {start} AND {clock} < {end})
      OR ({start} > {end} AND (
            ({clock} >= {start} AND {dow} = ANY({days}))
         OR ({clock} < {end} AND (({dow} + 6) %% 7) = ANY({days}))))
    )"""


def next_window_start(
    now: dt.datetime,
    timezone_name: str,
    days: list[int] | None = None,
    start: dt.time | None = None,
    end: dt.time | None = None,
) -> dt.datetime | None:
    """When the window next opens: ``now`` while it is open, None when it never does (no day)."""
    days = DEFAULT_WINDOW_DAYS if days is None else days
    start = DEFAULT_WINDOW_START if start is None else start
    end = DEFAULT_WINDOW_END if end is None else end
    if in_window(now, timezone_name, days, start, end):
        return now
    zone = _zone(timezone_name)
    today = now.astimezone(zone).date()
    opens_at = dt.time(0, 0) if start == end else start  # start = end: the whole listed day
    for offset in range(8):
        day = today + dt.timedelta(days=offset)
        if day.weekday() in days:
            candidate = dt.datetime.combine(day, opens_at, tzinfo=zone)
            if candidate > now:
                return candidate
    return None
