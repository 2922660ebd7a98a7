"""Admin: creating and changing provisioning objects goes through the services."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.messages import get_messages
from django.test import Client

from fleet.core.models import AuditLog, Region
from provisioning.choices import ServerStatus
from provisioning.models import AddressPool, AggregationServer
from provisioning.services.lifecycle import box_claim
from tests.provisioning.conftest import CLAIM_CODE

pytestmark = pytest.mark.django_db


@pytest.fixture
def admin_client(db: Any) -> Client:
    from django.contrib.auth import get_user_model

    user = get_user_model().objects.create_superuser("root", "root@example.com", "pw-root-123")
    client = Client()
    client.force_login(user)
    return client


def _server_form(region: Region, **overrides: str) -> dict[str, str]:
    data = {
        "name": "adm-1",
        "region": str(region.pk),
        "hostname": "adm-1.example.net",
        "public_ipv4": "198.51.100.77",
        "public_ipv6": "",
        "tunnel_port_min": "51820",
        "tunnel_port_max": "52819",
        "capacity": "100",
        "wg_public_key": "k",
        "status": "active",
    }
    data.update(overrides)
    return data


def test_admin_creates_a_server_through_the_service_and_shows_the_token_once(admin_client, region):
    response = admin_client.post("/admin/provisioning/aggregationserver/add/", _server_form(region))
    assert response.status_code == 302, response.content[:2000]
    server = AggregationServer.objects.get(name="adm-1")
    assert server.token_hash and server.token_prefix.startswith("otbs_")
    shown = [str(m) for m in get_messages(response.wsgi_request)]
    assert any(server.token_prefix in m for m in shown)
    entry = AuditLog.objects.get(action="server.create")
    assert entry.actor_label == "staff:root"


def test_admin_shows_service_errors_on_the_field(admin_client, actor, org, provisioned, make_box):
    server = provisioned["server"]
    box_claim(actor=actor, organization=org, serial=make_box().serial, claim_code=CLAIM_CODE)
    data = _server_form(server.region, name=server.name, capacity="0", hostname=server.hostname)
    data["public_ipv4"] = server.public_ipv4
    data["wg_public_key"] = server.wg_public_key
    data["tunnel_port_max"] = str(server.tunnel_port_max)
    response = admin_client.post(f"/admin/provisioning/aggregationserver/{server.pk}/change/", data)
    assert response.status_code == 200
    assert "capacity" in response.context["adminform"].form.errors
    assert AggregationServer.objects.get(pk=server.pk).capacity == 100
    assert not AuditLog.objects.filter(action="server.update").exists()


def test_admin_pool_create_validates_overlap_and_defaults(admin_client, provisioned, region):
    overlap = admin_client.post(
        "/admin/provisioning/addresspool/add/",
        {"name": "dup", "cidr": "203.0.113.0/24", "purpose": "public_ipv4", "region": str(region.pk)},
    )
    assert overlap.status_code == 200
    assert "cidr" in overlap.context["adminform"].form.errors
    created = admin_client.post(
        "/admin/provisioning/addresspool/add/",
        {"name": "fresh", "cidr": "192.0.2.0/24", "purpose": "public_ipv4", "region": str(region.pk)},
    )
    assert created.status_code == 302
    assert AddressPool.objects.get(name="fresh").prefix_length == 32
    listing = admin_client.get("/admin/provisioning/addresspool/")
    assert listing.status_code == 200 and b"fresh" in listing.content


def test_admin_status_action(admin_client, provisioned):
    server = provisioned["server"]
    response = admin_client.post(
        "/admin/provisioning/aggregationserver/",
        {"action": "set_draining", "_selected_action": [str(server.pk)]},
    )
    assert response.status_code == 302
    assert AggregationServer.objects.get(pk=server.pk).status == ServerStatus.DRAINING
    for page in (
        "provisioning/aggregationserver",
        "provisioning/addressassignment",
        "provisioning/tunnelcredential",
        "fleet/region",
    ):
        assert admin_client.get(f"/admin/{page}/").status_code == 200
    # regions moved to the fleet core: the old address of their admin pages still leads there
    moved = admin_client.get("/admin/provisioning/region/?q=eu")
    assert moved.status_code == 301 and moved["Location"] == "/admin/fleet/region/?q=eu"
