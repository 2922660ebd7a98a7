"""GET /api/v1/boxes/{id}/telemetry and /status: resolution choice, point cap, org isolation."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.db import connection
from django.utils import timezone

from fleet.telemetry.models import BoxStatus, WanStatus
from fleet.telemetry.selectors import telemetry_plan

pytestmark = pytest.mark.django_db


def insert_raw(box_id: Any, start: Any, count: int, step_s: int = 10) -> None:
    with connection.cursor() as cursor:
        for i in range(count):
            ts = start + timedelta(seconds=step_s * i)
            cursor.execute(
                "INSERT INTO telemetry_box_sample (box_id, seq, idx, ts, cpu_pct, mem_pct, load1, uptime_s,"
                " tunnel_up, conntrack, rx_bps, tx_bps, wans_up, wans_total)"
                " VALUES (%s, %s, 0, %s, %s, 40, 1, 1, true, 1, 100, 50, 1, 1)",
                [box_id, i + 1, ts, float(i % 100)],
            )
            cursor.execute(
                "INSERT INTO telemetry_wan_sample (box_id, seq, ts, iface, kind, up, rtt_ms, jitter_ms,"
                " loss_pct, rx_bps, tx_bps, subflows)"
                " VALUES (%s, %s, %s, 'wan1', 'fiber', true, 12, 1, 0, 100, 50, 1)",
                [box_id, i + 1, ts],
            )


@pytest.mark.parametrize(
    ("span", "expected"),
    [
        (timedelta(hours=1), "raw"),
        (timedelta(hours=6), "raw"),
        (timedelta(days=3), "5m"),
        (timedelta(days=30), "1h"),
    ],
)
def test_auto_resolution_follows_the_span(span: timedelta, expected: str) -> None:
    end = timezone.now()
    assert telemetry_plan(start=end - span, end=end, resolution="auto").resolution == expected


def test_plan_never_exceeds_max_points() -> None:
    end = timezone.now()
    for span in (timedelta(minutes=30), timedelta(hours=6), timedelta(days=3), timedelta(days=300)):
        for max_points in (1, 7, 50, 500, 2000):
            plan = telemetry_plan(start=end - span, end=end, resolution="auto", max_points=max_points)
            slots = -(-(plan.end - plan.start).total_seconds() // plan.bucket_s)
            assert slots <= max_points, (span, max_points, plan)


def test_raw_request_too_wide_for_the_cap_becomes_coarser() -> None:
    end = timezone.now()
    plan = telemetry_plan(start=end - timedelta(days=2), end=end, resolution="raw", max_points=100)
    assert plan.resolution == "5m"


def test_viewer_gets_capped_raw_series(people: Any, box_factory: Any, client_for: Any) -> None:
    # given an hour of 10-second samples
    box = box_factory(organization=people.org)
    end = timezone.now().replace(microsecond=0)
    start = end - timedelta(hours=1)
    insert_raw(box.pk, start, 360)
    # when a viewer asks for at most 50 points
    response = client_for(people.viewer).get(
        f"/api/v1/boxes/{box.pk}/telemetry",
        {"from": start.isoformat(), "to": end.isoformat(), "max_points": 50},
    )
    # then the raw series is bucketed to at most 50 points covering every sample
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["resolution"] == "raw"
    assert 0 < len(body["box"]) <= 50
    assert sum(point["samples"] for point in body["box"]) == 360
    assert [wan["iface"] for wan in body["wans"]] == ["wan1"]
    assert len(body["wans"][0]["points"]) <= 50
    assert body["wans"][0]["points"][0]["rtt_ms"] == 12.0


def test_uncapped_raw_series_returns_each_sample(people: Any, box_factory: Any, client_for: Any) -> None:
    box = box_factory(organization=people.org)
    end = timezone.now().replace(microsecond=0)
    insert_raw(box.pk, end - timedelta(minutes=10), 12)
    response = client_for(people.viewer).get(
        f"/api/v1/boxes/{box.pk}/telemetry",
        {"from": (end - timedelta(minutes=10)).isoformat(), "to": end.isoformat()},
    )
    assert response.status_code == 200
    assert len(response.json()["box"]) == 12


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"from": "2026-01-02T00:00:00Z", "to": "2026-01-01T00:00:00Z"}, "from"),
        ({"from": "yesterday"}, "from"),
        ({"to": "not-a-date"}, "to"),
        ({"resolution": "1s"}, "resolution"),
        ({"max_points": "0"}, "max_points"),
        ({"max_points": "5000"}, "max_points"),
    ],
)
def test_invalid_query_is_400_naming_the_field(
    people: Any, box_factory: Any, client_for: Any, params: dict, field: str
) -> None:
    box = box_factory(organization=people.org)
    response = client_for(people.viewer).get(f"/api/v1/boxes/{box.pk}/telemetry", params)
    assert response.status_code == 400
    assert field in response.json()["error"]["fields"]


def test_other_organisations_box_is_404(people: Any, box_factory: Any, client_for: Any) -> None:
    box = box_factory(organization=people.other_org)
    for path in ("telemetry", "status"):
        response = client_for(people.viewer).get(f"/api/v1/boxes/{box.pk}/{path}")
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "not_found"


def test_status_shows_box_and_wans(
    people: Any, box_factory: Any, client_for: Any, django_assert_max_num_queries: Any
) -> None:
    # given a box with a live status and two WANs
    box = box_factory(organization=people.org)
    now = timezone.now()
    BoxStatus.objects.create(box=box, online=True, last_seen_at=now, wans_up=1, wans_total=2, cpu_pct=5.0)
    for iface, up in (("wan1", True), ("wan2", False)):
        WanStatus.objects.create(
            box=box,
            iface=iface,
            kind="fiber",
            up=up,
            rtt_ms=10.0 if up else None,
            up_changed_at=now,
            updated_at=now,
            public_ip="198.51.100.1",
        )
    client = client_for(people.viewer)
    # when a viewer reads it
    with django_assert_max_num_queries(8):
        response = client.get(f"/api/v1/boxes/{box.pk}/status")
    # then online, last seen and per-WAN state are there
    assert response.status_code == 200
    body = response.json()
    assert body["online"] is True
    assert body["wans_up"] == 1
    assert [(w["iface"], w["up"], w["rtt_ms"]) for w in body["wans"]] == [
        ("wan1", True, 10.0),
        ("wan2", False, None),
    ]


def test_status_of_a_box_that_never_connected(people: Any, box_factory: Any, client_for: Any) -> None:
    box = box_factory(organization=people.org)
    response = client_for(people.viewer).get(f"/api/v1/boxes/{box.pk}/status")
    assert response.status_code == 200
    assert response.json()["never_connected"] is True
    assert response.json()["wans"] == []


def test_non_finite_values_already_stored_read_as_null(
    people: Any, box_factory: Any, client_for: Any
) -> None:
    # given values no agent can send any more but that were stored before the protocol bounded every
    # number (issue #14 item 1: load1 1e39 became Infinity in a real column): raw samples, rollups
    # made of them, and the live status
    box = box_factory(organization=people.org)
    now = timezone.now()
    bucket = now.replace(minute=0, second=0, microsecond=0) - timedelta(hours=1)
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO telemetry_box_sample (box_id, seq, idx, ts, cpu_pct, mem_pct, load1, uptime_s,"
            " tunnel_up, conntrack, rx_bps, tx_bps, wans_up, wans_total)"
            " VALUES (%s, 1, 0, %s, 'NaN', 40, 'Infinity', 1, true, 1, 100, 50, 1, 1)",
            [box.pk, now - timedelta(minutes=1)],
        )
        cursor.execute(
            "INSERT INTO telemetry_wan_sample (box_id, seq, ts, iface, kind, up, rtt_ms, jitter_ms,"
            " loss_pct, rx_bps, tx_bps, subflows)"
            " VALUES (%s, 1, %s, 'wan1', 'fiber', true, 'Infinity', '-Infinity', 'NaN', 100, 50, 1)",
            [box.pk, now - timedelta(minutes=1)],
        )
        for resolution in ("5m", "1h"):
            cursor.execute(
                f"INSERT INTO telemetry_box_rollup_{resolution} (box_id, bucket, samples, cpu_avg, cpu_max,"
                " mem_avg, load_avg, rx_avg, rx_max, tx_avg, tx_max, tunnel_up_samples)"
                " VALUES (%s, %s, 1, 'NaN', 'NaN', 1, 'Infinity', 1, 1, 1, 1, 1)",
                [box.pk, bucket],
            )
            cursor.execute(
                f"INSERT INTO telemetry_wan_rollup_{resolution} (box_id, iface, bucket, samples, up_samples,"
                " rtt_count, rtt_avg, rtt_max, jitter_avg, loss_count, loss_avg, rx_avg, rx_max, tx_avg,"
                " tx_max)"
                " VALUES (%s, 'wan1', %s, 1, 1, 1, 'Infinity', 'Infinity', 'NaN', 1, 'NaN', 1, 1, 1, 1)",
                [box.pk, bucket],
            )
    BoxStatus.objects.create(box=box, online=True, last_seen_at=now, load1=float("inf"), cpu_pct=float("nan"))
    WanStatus.objects.create(
        box=box,
        iface="wan1",
        up=True,
        rtt_ms=float("inf"),
        loss_pct=float("nan"),
        up_changed_at=now,
        updated_at=now,
    )
    client = client_for(people.viewer)
    # when a viewer reads the series at every resolution and the status
    window = {"from": (now - timedelta(hours=3)).isoformat(), "to": now.isoformat()}
    for resolution in ("raw", "5m", "1h"):
        response = client.get(f"/api/v1/boxes/{box.pk}/telemetry", {**window, "resolution": resolution})
        # then every read answers, a value that is not a finite number being null
        assert response.status_code == 200, (resolution, response.content)
        body = response.json()
        assert [(point["cpu_pct"], point["load1"]) for point in body["box"]] == [(None, None)], resolution
        wan_point = body["wans"][0]["points"][0]
        assert (wan_point["rtt_ms"], wan_point["rtt_max_ms"], wan_point["loss_pct"]) == (None, None, None)
    response = client.get(f"/api/v1/boxes/{box.pk}/status")
    assert response.status_code == 200, response.content
    assert (response.json()["load1"], response.json()["cpu_pct"]) == (None, None)
    assert (response.json()["wans"][0]["rtt_ms"], response.json()["wans"][0]["loss_pct"]) == (None, None)
