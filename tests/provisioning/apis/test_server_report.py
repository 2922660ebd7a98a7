"""POST /api/v1/servers/self/report: a gateway's health and its boxes' tunnels, stored with rates."""

from __future__ import annotations

import base64
import copy
from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from fleet.core.models import AuditLog, Box
from provisioning.models import BoxTunnelStatus, GatewayHealth
from provisioning.services import gateway as gateway_services
from provisioning.services.lifecycle import box_claim
from tests.provisioning.conftest import CLAIM_CODE

pytestmark = [pytest.mark.django_db, pytest.mark.urls("tests.provisioning.apis.urls")]

URL = "/api/v1/servers/self/report"
GATEWAY_KEY = base64.b64encode(bytes(range(32))).decode()


def _bearer(token: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    return client


def report(*boxes: dict[str, Any], **fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "gateway_version": "0.1.0",
        "uptime_s": 120,
        "load1": 0.5,
        "cpu_pct": 12.5,
        "mem_pct": 40.0,
        "wg_public_key": "",
        "peers": len(boxes),
        "converge_errors": 0,
        "last_error": "",
        "upstream": {"name": "eth0", "rx_bytes": 1_000_000, "tx_bytes": 2_000_000},
        "boxes": list(boxes),
    }
    body.update(fields)
    return body


def tunnel(box: Box, rx: int = 0, tx: int = 0, **fields: Any) -> dict[str, Any]:
    return {
        "box_id": str(box.pk),
        "rx_bytes": rx,
        "tx_bytes": tx,
        "connections": 2,
        "handshake_age_s": 7,
        **fields,
    }


@pytest.fixture
def boxes(actor, org, provisioned, make_box) -> list[Box]:
    """Two boxes claimed onto the provisioned server."""
    return [
        box_claim(actor=actor, organization=org, serial=make_box().serial, claim_code=CLAIM_CODE)
        for _ in range(2)
    ]


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The time the service sees; tests move it (``clock[0] += timedelta(...)``)."""
    now = [timezone.now()]
    monkeypatch.setattr(gateway_services.timezone, "now", lambda: now[0])
    return now


def test_a_report_stores_the_health_and_each_tunnel(provisioned, boxes, clock) -> None:
    # when the server's gateway reports two boxes
    response = _bearer(provisioned["token"]).post(
        URL, report(tunnel(boxes[0], 100, 200), tunnel(boxes[1], handshake_age_s=None)), format="json"
    )

    # then both are stored, with no rates yet (no earlier report), and the health row is the report
    assert response.status_code == 200, response.json()
    assert response.json() == {"boxes": 2, "ignored": 0, "wg_public_key_updated": False}
    health = GatewayHealth.objects.get(server=provisioned["server"])
    assert (health.gateway_version, health.uptime_s, health.load1, health.cpu_pct, health.mem_pct) == (
        "0.1.0",
        120,
        0.5,
        12.5,
        40.0,
    )
    assert (health.peers, health.converge_errors, health.last_report_at) == (2, 0, clock[0])
    assert (health.upstream_iface, health.upstream_rx_bytes, health.upstream_rx_bps) == (
        "eth0",
        1_000_000,
        None,
    )
    first = BoxTunnelStatus.objects.get(box=boxes[0])
    assert (first.rx_bytes, first.tx_bytes, first.rx_bps, first.tx_bps) == (100, 200, None, None)
    assert (first.connections, first.handshake_age_s, first.server_id) == (2, 7, provisioned["server"].pk)
    assert BoxTunnelStatus.objects.get(box=boxes[1]).handshake_age_s is None


def test_rates_come_from_the_previous_report(provisioned, boxes, clock) -> None:
    client = _bearer(provisioned["token"])
    client.post(URL, report(tunnel(boxes[0], 1_000, 5_000)), format="json")

    # when the next report comes 10 s later with more bytes counted
    clock[0] += timedelta(seconds=10)
    upstream = {"name": "eth0", "rx_bytes": 1_000_000 + 12_500_000, "tx_bytes": 2_000_000 + 1_250_000}
    client.post(
        URL, report(tunnel(boxes[0], 1_000 + 125_000, 5_000 + 1_250_000), upstream=upstream), format="json"
    )

    # then the rates are the differences over the 10 s, in bits per second
    row = BoxTunnelStatus.objects.get(box=boxes[0])
    assert (row.rx_bps, row.tx_bps) == (100_000, 1_000_000)
    health = GatewayHealth.objects.get(server=provisioned["server"])
    assert (health.upstream_rx_bps, health.upstream_tx_bps) == (10_000_000, 1_000_000)


def test_a_counter_that_went_back_gives_no_rate_rather_than_a_wrong_one(provisioned, boxes, clock) -> None:
    client = _bearer(provisioned["token"])
    client.post(URL, report(tunnel(boxes[0], 9_000, 9_000)), format="json")
    clock[0] += timedelta(seconds=10)

    client.post(URL, report(tunnel(boxes[0], 100, 9_800)), format="json")

    row = BoxTunnelStatus.objects.get(box=boxes[0])
    assert (row.rx_bytes, row.rx_bps, row.tx_bps) == (100, None, 640)


def test_boxes_not_on_the_server_are_ignored_and_boxes_left_out_lose_their_row(
    provisioned, boxes, make_box, clock
) -> None:
    client = _bearer(provisioned["token"])
    client.post(URL, report(tunnel(boxes[0]), tunnel(boxes[1])), format="json")
    stranger = make_box()  # not claimed: on no server

    response = client.post(URL, report(tunnel(boxes[0]), tunnel(stranger)), format="json")

    assert response.json() == {"boxes": 1, "ignored": 1, "wg_public_key_updated": False}
    assert list(BoxTunnelStatus.objects.values_list("box_id", flat=True)) == [boxes[0].pk]


def test_a_report_without_boxes_updates_the_health_and_keeps_the_tunnel_rows(
    provisioned, boxes, clock
) -> None:
    client = _bearer(provisioned["token"])
    client.post(URL, report(tunnel(boxes[0], 10, 20)), format="json")
    clock[0] += timedelta(seconds=10)
    body = report(converge_errors=1, last_error="peers: HTTP 503")
    del body["boxes"]  # a gateway that has no peers document yet

    response = client.post(URL, body, format="json")

    assert response.status_code == 200 and response.json()["boxes"] == 0
    health = GatewayHealth.objects.get(server=provisioned["server"])
    assert (health.converge_errors, health.last_error, health.last_report_at) == (
        1,
        "peers: HTTP 503",
        clock[0],
    )
    assert BoxTunnelStatus.objects.get(box=boxes[0]).rx_bytes == 10


def test_a_new_gateway_key_becomes_the_servers_audited_and_reaches_the_boxes_configs(
    provisioned, boxes, clock
) -> None:
    server = provisioned["server"]
    hashes = dict(Box.objects.filter(server=server).values_list("pk", "config_hash"))

    response = _bearer(provisioned["token"]).post(URL, report(wg_public_key=GATEWAY_KEY), format="json")

    assert response.json()["wg_public_key_updated"] is True
    server.refresh_from_db()
    assert server.wg_public_key == GATEWAY_KEY
    entry = AuditLog.objects.get(action="server.wg_public_key")
    assert entry.actor_label == f"server:{server.name}" and entry.after == {"wg_public_key": GATEWAY_KEY}
    changed = dict(Box.objects.filter(server=server).values_list("pk", "config_hash"))
    assert all(changed[pk] != before for pk, before in hashes.items())
    # the same key again changes nothing and writes no audit entry
    again = _bearer(provisioned["token"]).post(URL, report(wg_public_key=GATEWAY_KEY), format="json")
    assert again.json()["wg_public_key_updated"] is False
    assert AuditLog.objects.filter(action="server.wg_public_key").count() == 1


def test_a_report_touches_only_the_calling_servers_rows(
    region, make_server, provisioned, boxes, clock
) -> None:
    _, other_token = make_server(region, name="agg-other")
    _bearer(provisioned["token"]).post(URL, report(tunnel(boxes[0])), format="json")

    # another server reporting the same box (not on it) and nothing else
    response = _bearer(other_token).post(URL, report(tunnel(boxes[0], 5, 5)), format="json")

    assert response.json()["ignored"] == 1
    row = BoxTunnelStatus.objects.get(box=boxes[0])
    assert row.server_id == provisioned["server"].pk and row.rx_bytes == 0
    assert GatewayHealth.objects.count() == 2


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda body: body.pop("gateway_version"), "gateway_version"),
        (lambda body: body.update(uptime_s="120"), "uptime_s"),
        (lambda body: body.update(load1=True), "load1"),
        (lambda body: body.update(cpu_pct=100.5), "cpu_pct"),
        (lambda body: body.update(mem_pct=-1), "mem_pct"),
        (lambda body: body.update(peers=1.5), "peers"),
        (lambda body: body.update(colour="red"), "colour"),
        (lambda body: body.update(wg_public_key="not-a-key"), "wg_public_key"),
        (
            lambda body: body.update(upstream={"name": "eth0", "rx_bytes": -1, "tx_bytes": 0}),
            "upstream.rx_bytes",
        ),
        (lambda body: body.update(upstream={"name": "eth0", "rx_bytes": 1}), "upstream.tx_bytes"),
        (lambda body: body.update(boxes="none"), "boxes"),
        (lambda body: body["boxes"][1].update(rx_bytes=2**63), "boxes[1].rx_bytes"),
        (lambda body: body["boxes"][1].update(box_id="box-1"), "boxes[1].box_id"),
        (lambda body: body["boxes"][1].update(handshake_age_s="7"), "boxes[1].handshake_age_s"),
        (lambda body: body["boxes"][1].pop("connections"), "boxes[1].connections"),
        (lambda body: body["boxes"][0].update(extra=1), "boxes[0].extra"),
        (lambda body: body["boxes"].append(copy.deepcopy(body["boxes"][0])), "boxes[2].box_id"),
    ],
)
def test_a_wrong_field_is_named_and_nothing_is_stored(provisioned, boxes, change, field) -> None:
    body = report(tunnel(boxes[0]), tunnel(boxes[1]))
    change(body)
    audit_before = AuditLog.objects.count()

    response = _bearer(provisioned["token"]).post(URL, body, format="json")

    assert response.status_code == 400, response.json()
    assert field in response.json()["error"]["fields"], response.json()
    assert not GatewayHealth.objects.exists() and not BoxTunnelStatus.objects.exists()
    assert AuditLog.objects.count() == audit_before


def test_a_report_over_the_body_limit_is_refused_before_parsing(provisioned, boxes, settings) -> None:
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 2_000
    body = report(*[tunnel(boxes[0]) for _ in range(30)])
    response = _bearer(provisioned["token"]).post(URL, body, format="json")
    assert response.status_code == 413 and response.json()["error"]["code"] == "too_large"
    assert not GatewayHealth.objects.exists()


@pytest.mark.parametrize("count", [1, 20])
def test_a_report_takes_the_same_queries_whatever_the_number_of_boxes(
    actor, org, provisioned, make_box, django_assert_num_queries, count, clock
) -> None:
    claimed = [
        box_claim(actor=actor, organization=org, serial=make_box().serial, claim_code=CLAIM_CODE)
        for _ in range(count)
    ]
    server = provisioned["server"]
    gateway_services.server_report_record(
        server=server, report=_validated(report(*[tunnel(b) for b in claimed]))
    )
    clock[0] += timedelta(seconds=10)
    # savepoint and its release (the test runs in a transaction), health lock, health save, boxes on
    # the server, their previous rows, the upsert, stale rows
    with django_assert_num_queries(8):
        gateway_services.server_report_record(
            server=server, report=_validated(report(*[tunnel(b, 10, 10) for b in claimed]))
        )


def _validated(body: dict[str, Any]) -> dict[str, Any]:
    from provisioning.apis.infrastructure import ServerReportApi

    serializer = ServerReportApi.InputSerializer(data=body)
    assert serializer.is_valid(), serializer.errors
    return dict(serializer.validated_data)
