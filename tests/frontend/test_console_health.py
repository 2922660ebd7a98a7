"""The console's fleet health: public IPv4 pool usage per region and server (the real cap, not the
slot capacity) and stale gateway reports flagged."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from django.test import Client
from django.utils import timezone

from provisioning.models import GatewayHealth
from provisioning.selectors.infrastructure import public_ipv4_usage

pytestmark = pytest.mark.django_db


def staff(people: Any) -> Client:
    client = Client()
    client.force_login(people.staff)
    return client


def row(content: str, marker: str) -> str:
    start = content.index(marker)
    return content[start : content.index("</tr>", start)]


def test_the_region_is_capped_by_its_public_ipv4_pool_not_its_slots(
    people: Any, claimed_box_factory: Any, provisioned_region: Any
) -> None:
    # given a region whose server has 200 slots and whose public pool is a /26, one box on it
    box = claimed_box_factory(people.org, "ACME-0001")
    usage = public_ipv4_usage()
    region = usage["regions"]["eu-west"]
    # then the pool's usable addresses (a /26 keeps its network and broadcast: 62) cap the region
    assert region["size"] == 62 and region["active"] == 1 and region["free"] == 61
    assert usage["servers"][str(box.server_id)]["in_use"] == 1
    assert usage["servers"][str(box.server_id)]["available"] == 61

    content = staff(people).get("/console/").content.decode()
    region_row = row(content, 'data-region="eu-west"')
    assert "1 / 62" in region_row and "1 / 200" in region_row
    assert "<strong>61</strong> boxes" in region_row and "capped by public IPv4 addresses" in region_row
    server_row = row(content, f'data-server="{provisioned_region.server.name}"')
    assert "1 in use" in server_row and "room for 61 more" in server_row


def test_stale_gateway_reports_are_flagged(
    people: Any, provisioned_region_factory: Any, settings: Any
) -> None:
    settings.OTB = {**settings.OTB, "GATEWAY_STALE_S": 60}
    fresh = provisioned_region_factory("eu-west").server
    old = provisioned_region_factory(
        "eu-east", public="198.51.100.0/26", tunnel="100.65.0.0/24", ipv6="2001:db8:100::/44"
    ).server
    for server, age in ((fresh, 5), (old, 600)):
        GatewayHealth.objects.create(
            server=server,
            last_report_at=timezone.now() - dt.timedelta(seconds=age),
            gateway_version="0.1.0",
            uptime_s=60,
            peers=0,
            converge_errors=0,
        )
    content = staff(people).get("/console/").content.decode()
    assert 'data-stale="1"' not in row(content, f'data-server="{fresh.name}"')
    assert 'data-stale="1"' in row(content, f'data-server="{old.name}"')
    assert "flagged stale after 60 s" in content
