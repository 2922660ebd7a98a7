"""/metrics: who may read it, and that what it says matches what happened (HTTP requests by route,
agent sessions and telemetry acks, batches, Celery tasks recorded by workers, business gauges)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from django.test import Client
from prometheus_client.parser import text_string_to_metric_families

from config.metrics import BUSINESS
from fleet.core.task_metrics import KEY, _redis, task_record
from fleet.telemetry.models import BoxStatus

pytestmark = pytest.mark.django_db


def scrape(client: Client, **extra: Any) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = client.get("/metrics", REMOTE_ADDR="127.0.0.1", **extra)
    assert response.status_code == 200, response.content
    assert response["Content-Type"].startswith("text/plain")
    values = {}
    for family in text_string_to_metric_families(response.content.decode()):
        for sample in family.samples:
            values[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return values


def value(metrics: dict, name: str, **labels: str) -> float:
    return float(metrics.get((name, tuple(sorted(labels.items()))), 0.0))


def test_metrics_are_for_loopback_or_the_token_holder(settings: Any) -> None:
    client = Client()
    assert client.get("/metrics", REMOTE_ADDR="127.0.0.1").status_code == 200
    assert client.get("/metrics", REMOTE_ADDR="203.0.113.9").status_code == 403
    settings.OTB = {**settings.OTB, "METRICS_TOKEN": "s3cret"}
    assert client.get("/metrics", REMOTE_ADDR="127.0.0.1").status_code == 403
    assert (
        client.get("/metrics", REMOTE_ADDR="203.0.113.9", HTTP_AUTHORIZATION="Bearer nope").status_code == 403
    )
    assert (
        client.get("/metrics", REMOTE_ADDR="203.0.113.9", HTTP_AUTHORIZATION="Bearer s3cret").status_code
        == 200
    )


def test_http_requests_are_counted_by_route_not_by_path(
    client_for: Any, people: Any, box_factory: Any
) -> None:
    client = Client()
    before = scrape(client)
    api = client_for(people.viewer)
    ids = [str(box_factory(organization=people.org).pk) for _ in range(3)]
    for box_id in ids:
        api.get(f"/api/v1/boxes/{box_id}/")
    after = scrape(client)
    route = "/api/v1/boxes/<uuid:box_id>/"
    name = "otb_http_requests_total"
    assert (
        value(after, name, route=route, method="GET", status="200")
        - value(before, name, route=route, method="GET", status="200")
        == 3
    )
    assert value(after, "otb_http_request_seconds_count", route=route, method="GET") >= 3
    routes = {dict(labels).get("route", "") for metric, labels in after if metric == name}
    assert not any(box_id in route for route in routes for box_id in ids)


def test_business_gauges_count_claimed_boxes_by_presence(people: Any, claimed_box_factory: Any) -> None:
    boxes = [claimed_box_factory(people.org) for _ in range(3)]
    BoxStatus.objects.update_or_create(box=boxes[0], defaults={"online": True})
    BUSINESS._at = 0.0  # counted at most every 10 s: not from an earlier test's scrape
    metrics = scrape(Client())
    assert value(metrics, "otb_boxes", presence="online") == 1
    assert value(metrics, "otb_boxes", presence="offline") == 2
    assert value(metrics, "otb_alerts_firing") == 0


def test_celery_tasks_recorded_by_workers_are_exposed(settings: Any) -> None:
    _redis().delete(KEY)
    task_record("fleet.test.task", "succeeded", 0.2)
    task_record("fleet.test.task", "succeeded", 3.0)
    task_record("fleet.test.task", "failed", 0.01)
    metrics = scrape(Client())
    assert value(metrics, "otb_celery_tasks_total", task="fleet.test.task", outcome="succeeded") == 2
    assert value(metrics, "otb_celery_tasks_total", task="fleet.test.task", outcome="failed") == 1
    assert value(metrics, "otb_celery_task_seconds_count", task="fleet.test.task") == 3
    assert value(metrics, "otb_celery_task_seconds_bucket", task="fleet.test.task", le="0.5") == 2
    assert value(metrics, "otb_celery_task_seconds_sum", task="fleet.test.task") == pytest.approx(3.21)
    assert ("otb_celery_queue_length", (("queue", "telemetry"),)) in metrics
    _redis().delete(KEY)


def test_the_dashboard_and_the_docs_name_only_metrics_that_exist() -> None:
    """deploy/grafana/otb-fleet.json and docs/operations.md stay true to what /metrics exposes."""
    BUSINESS._at = 0.0
    text = Client().get("/metrics", REMOTE_ADDR="127.0.0.1").content.decode()
    exposed = set()
    for family in text_string_to_metric_families(text):  # families with no sample yet count too
        suffixes = {"counter": ["_total"], "histogram": ["", "_bucket", "_count", "_sum"]}.get(
            family.type, [""]
        )
        exposed |= {family.name + suffix for suffix in suffixes}
    root = Path(__file__).resolve().parents[2]
    dashboard = json.loads((root / "deploy" / "grafana" / "otb-fleet.json").read_text())
    named = {
        name
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in re.findall(r"\b(otb_[a-z0-9_]+)", target["expr"])
    }
    pool_only = {"otb_db_pool_size", "otb_db_pool_available", "otb_db_requests_waiting"}  # with a pool only
    assert named and named - pool_only <= exposed, named - exposed
    documented = set(re.findall(r"`(otb_[a-z0-9_]+)`", (root / "docs" / "operations.md").read_text()))
    assert documented and documented - pool_only <= exposed, documented - exposed
    ours = {
        name
        for name in exposed
        if name.startswith("otb_") and not name.endswith(("_bucket", "_count", "_sum"))
    }
    undocumented = {
        name for name in ours if not any(name == doc or name.startswith(doc + "_") for doc in documented)
    }
    assert not undocumented, undocumented
