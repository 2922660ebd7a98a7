"""Maintenance windows (fleet.firmware.windows): Python and SQL agree, in the organisation's time
zone; the default window is nightly."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from django.db import connection

from fleet.firmware.models import DEFAULT_WINDOW_END, DEFAULT_WINDOW_START
from fleet.firmware.windows import in_window, next_window_start, window_sql

UTC = dt.UTC
# Wednesday 2026-01-14 (Paris is UTC+1 in winter)
WEDNESDAY = dt.date(2026, 1, 14)


def at(hour: int, minute: int = 0, day: dt.date = WEDNESDAY) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(hour, minute), tzinfo=UTC)


def sql_in_window(now: dt.datetime, zone: str, days: list[int] | None, start: Any, end: Any) -> bool:
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT {window_sql()} FROM (SELECT %(zone)s::text AS timezone) o "
            "LEFT JOIN (SELECT %(days)s::smallint[] AS window_days, %(start)s::time AS window_start, "
            "%(end)s::time AS window_end WHERE %(has)s) p ON true",
            {"now": now, "zone": zone, "days": days, "start": start, "end": end, "has": days is not None},
        )
        return cursor.fetchone()[0]


CASES = [
    # (utc time, zone, days, start, end, expected)
    (at(1, 30), "Europe/Paris", None, None, None, True),  # 02:30 Paris, default nightly window
    (at(4, 30), "Europe/Paris", None, None, None, False),  # 05:30 Paris
    (at(2, 30), "UTC", None, None, None, True),
    (at(12), "America/New_York", None, None, None, False),
    (at(22, 30), "UTC", [2], dt.time(22), dt.time(3), True),  # Wednesday night, past midnight window
    (at(1, 0, dt.date(2026, 1, 15)), "UTC", [2], dt.time(22), dt.time(3), True),  # its Thursday morning part
    (at(1, 0, WEDNESDAY), "UTC", [2], dt.time(22), dt.time(3), False),  # Tuesday's night is not listed
    (at(10), "UTC", [2], dt.time(0), dt.time(0), True),  # all day on Wednesday
    (at(10), "UTC", [3], dt.time(0), dt.time(0), False),
    (at(2, 30), "Not/AZone", None, None, None, True),  # an unknown zone reads as UTC
]


@pytest.mark.django_db
@pytest.mark.parametrize(("now", "zone", "days", "start", "end", "expected"), CASES)
def test_python_and_sql_windows_agree(
    now: dt.datetime, zone: str, days: Any, start: Any, end: Any, expected: bool
) -> None:
    assert in_window(now, zone, days, start, end) is expected
    assert sql_in_window(now, zone, days, start, end) is expected


def test_default_window_is_nightly() -> None:
    assert (dt.time(2), dt.time(5)) == (DEFAULT_WINDOW_START, DEFAULT_WINDOW_END)


@pytest.mark.parametrize(
    ("now", "zone", "days", "start", "end", "expected"),
    [
        # open now: now
        (at(1, 30), "Europe/Paris", None, None, None, at(1, 30)),
        # Wednesday 13:00 Paris, nightly 02:00-05:00: Thursday 02:00 Paris = 01:00 UTC
        (at(12), "Europe/Paris", None, None, None, at(1, day=WEDNESDAY + dt.timedelta(days=1))),
        # Saturdays only (5), 22:00-04:00 across midnight: Saturday 22:00 UTC
        (at(12), "UTC", [5], dt.time(22), dt.time(4), at(22, day=WEDNESDAY + dt.timedelta(days=3))),
        # all day on Mondays (start = end): next Monday 00:00 New York = 05:00 UTC
        (
            at(12),
            "America/New_York",
            [0],
            dt.time(3),
            dt.time(3),
            at(5, day=WEDNESDAY + dt.timedelta(days=5)),
        ),
        # no day at all: never
        (at(12), "UTC", [], dt.time(2), dt.time(5), None),
    ],
)
def test_next_window_start(now: Any, zone: str, days: Any, start: Any, end: Any, expected: Any) -> None:
    opens = next_window_start(now, zone, days, start, end)
    assert opens == expected
    if opens is not None:  # and the window is indeed open then, and Python and SQL agree on it
        assert in_window(opens, zone, days, start, end)
