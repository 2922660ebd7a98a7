"""Provisioning API: the server peers endpoint and the staff-only management endpoints."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from fleet.core.models import AgentCredential, ApiToken, AuditLog, Box
from fleet.core.tokens import TokenKind, token_issue
from provisioning.choices import AssignmentState, PoolPurpose, ServerStatus
from provisioning.models import AddressAssignment, AddressPool, AggregationServer
from provisioning.services.lifecycle import box_claim
from tests.provisioning.conftest import CLAIM_CODE

pytestmark = [pytest.mark.django_db, pytest.mark.urls("tests.provisioning.apis.urls")]


def _bearer(token: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    return client


def _user_token(user: Any, org: Any) -> str:
    issued = token_issue(TokenKind.USER)
    ApiToken.objects.create(
        user=user,
        organization=org,
        name="t",
        token_prefix=issued.prefix,
        token_hash=issued.digest,
        expires_at=timezone.now() + timedelta(days=1),
    )
    return issued.value


@pytest.fixture
def staff_client(staff_user: Any) -> APIClient:
    client = APIClient()
    client.force_authenticate(staff_user)
    return client


@pytest.fixture
def user_client(plain_user: Any, org: Any) -> APIClient:
    return _bearer(_user_token(plain_user, org))


# --- peers ------------------------------------------------------------------------------------------


def test_peers_with_server_token_returns_etag_and_304(actor, org, provisioned, make_box):
    # given a server with two claimed boxes
    for _ in range(2):
        box_claim(actor=actor, organization=org, serial=make_box().serial, claim_code=CLAIM_CODE)
    client = _bearer(provisioned["token"])

    # when the server fetches its peers
    response = client.get("/api/v1/servers/self/peers")

    # then it gets both with what it needs to terminate them, and an ETag
    assert response.status_code == 200
    body = response.json()
    assert body["count"] == 2 and body["server"] == provisioned["server"].name
    peer = body["peers"][0]
    assert peer["tunnel_port"] == provisioned["server"].tunnel_port_min
    assert peer["tunnel"]["server_address"] == "100.64.0.0" and peer["tunnel"]["box_address"] == "100.64.0.1"
    assert peer["glorytun_key"] and peer["shadowsocks"]["password"] and peer["wg_preshared_key"]
    etag = response["ETag"]
    assert etag == f'"{body["etag"]}"'

    # and when it asks again with If-None-Match, it gets 304; after a change, a new ETag
    assert client.get("/api/v1/servers/self/peers", HTTP_IF_NONE_MATCH=etag).status_code == 304
    box_claim(actor=actor, organization=org, serial=make_box().serial, claim_code=CLAIM_CODE)
    changed = client.get("/api/v1/servers/self/peers", HTTP_IF_NONE_MATCH=etag)
    assert changed.status_code == 200 and changed["ETag"] != etag and changed.json()["count"] == 3


def test_peers_refuses_agent_and_user_tokens(org, provisioned, make_box, user_client, staff_client):
    box = make_box()
    agent = token_issue(TokenKind.AGENT)
    AgentCredential.objects.create(box=box, token_hash=agent.digest)
    assert _bearer(agent.value).get("/api/v1/servers/self/peers").status_code == 403
    assert user_client.get("/api/v1/servers/self/peers").status_code == 403
    assert staff_client.get("/api/v1/servers/self/peers").status_code == 403
    assert APIClient().get("/api/v1/servers/self/peers").status_code == 401
    assert _bearer("otbs_not-a-real-token").get("/api/v1/servers/self/peers").status_code == 401


def test_rotated_server_token_stops_working(staff_client, provisioned):
    server = provisioned["server"]
    response = staff_client.post(f"/api/v1/servers/{server.pk}/rotate-token")
    assert response.status_code == 200
    assert _bearer(provisioned["token"]).get("/api/v1/servers/self/peers").status_code == 401
    assert _bearer(response.json()["token"]).get("/api/v1/servers/self/peers").status_code == 200


# --- staff CRUD -------------------------------------------------------------------------------------


def test_staff_creates_region_server_and_pools(staff_client):
    # when staff create a region, a server and its pools through the API
    region = staff_client.post("/api/v1/regions/", {"code": "fr-par", "name": "Paris"}, format="json")
    assert region.status_code == 201
    region_id = region.json()["id"]
    server = staff_client.post(
        "/api/v1/servers/",
        {
            "name": "par-1",
            "region": region_id,
            "hostname": "par-1.example.net",
            "public_ipv4": "198.51.100.10",
            "tunnel_port_min": 40000,
            "tunnel_port_max": 40999,
            "capacity": 500,
            "wg_public_key": "srv-key",
        },
        format="json",
    )
    pool = staff_client.post(
        "/api/v1/pools/",
        {"name": "par-public", "cidr": "203.0.113.0/28", "purpose": "public_ipv4", "region": region_id},
        format="json",
    )

    # then the server token is shown once and works, and the pool reports its utilisation
    assert server.status_code == 201, server.json()
    token = server.json()["token"]
    assert token.startswith("otbs_") and server.json()["spare"] == 500
    assert _bearer(token).get("/api/v1/servers/self/peers").json()["count"] == 0
    detail = staff_client.get(f"/api/v1/servers/{server.json()['id']}/").json()
    assert "token" not in detail and detail["region_code"] == "fr-par"
    assert pool.status_code == 201, pool.json()
    assert pool.json()["prefix_length"] == 32
    # (a /28 of public addresses: 16, less the network and broadcast addresses)
    assert pool.json()["utilisation"] == {"size": 14, "active": 0, "quarantined": 0, "free": 14}
    assert AuditLog.objects.filter(action__in=["region.create", "server.create", "pool.create"]).count() == 3


def test_staff_patches_server_status_and_bad_values_name_the_field(staff_client, provisioned):
    server = provisioned["server"]
    url = f"/api/v1/servers/{server.pk}/"
    response = staff_client.patch(url, {"status": "draining"}, format="json")
    assert response.status_code == 200 and response.json()["status"] == ServerStatus.DRAINING
    assert AggregationServer.objects.get(pk=server.pk).status == ServerStatus.DRAINING
    bad = staff_client.patch(url, {"status": "sleeping"}, format="json")
    assert bad.status_code == 400 and "status" in bad.json()["error"]["fields"]
    ports = staff_client.patch(url, {"tunnel_port_min": 60000, "tunnel_port_max": 50000}, format="json")
    assert ports.status_code == 400 and ports.json()["error"]["fields"]
    assert staff_client.get("/api/v1/servers/00000000-0000-0000-0000-000000000000/").status_code == 404


def test_pool_detail_reports_utilisation(actor, org, staff_client, provisioned, make_box):
    box_claim(actor=actor, organization=org, serial=make_box().serial, claim_code=CLAIM_CODE)
    pool = provisioned["pools"][PoolPurpose.TUNNEL_P2P]
    AddressAssignment.objects.filter(pool=pool).update(
        state=AssignmentState.QUARANTINED, quarantine_until=timezone.now()
    )
    box_claim(actor=actor, organization=org, serial=make_box().serial, claim_code=CLAIM_CODE)
    body = staff_client.get(f"/api/v1/pools/{pool.pk}/").json()
    assert body["utilisation"] == {"size": 32, "active": 1, "quarantined": 1, "free": 30}


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"cidr": "203.0.113.16/28", "purpose": "public_ipv4"}, "cidr"),  # overlaps
        ({"cidr": "2001:db8:ffff::/48", "purpose": "public_ipv4"}, "cidr"),  # wrong family
        ({"cidr": "10.0.0.300/24", "purpose": "tunnel_p2p"}, "cidr"),  # not a network
        ({"cidr": "2001:db8:ff00::/60", "purpose": "ipv6_prefix", "prefix_length": 56}, "prefix_length"),
        ({"cidr": "10.1.0.0/24", "purpose": "nonsense"}, "purpose"),
        ({"cidr": "10.1.0.0/24", "purpose": "tunnel_p2p", "region": "not-a-uuid"}, "region"),
    ],
)
def test_bad_pool_input_is_a_400_naming_the_field(staff_client, provisioned, region, payload, field):
    payload = {"name": "new-pool", "region": str(region.pk), **payload}
    response = staff_client.post("/api/v1/pools/", payload, format="json")
    assert response.status_code == 400, response.content
    assert field in response.json()["error"]["fields"]
    assert not AddressPool.objects.filter(name="new-pool").exists()


def test_non_staff_are_refused(user_client, provisioned, make_box):
    box = make_box()
    for method, url in [
        ("get", "/api/v1/regions/"),
        ("get", "/api/v1/servers/"),
        ("post", "/api/v1/servers/"),
        ("get", f"/api/v1/servers/{provisioned['server'].pk}/"),
        ("post", f"/api/v1/servers/{provisioned['server'].pk}/rotate-token"),
        ("get", "/api/v1/pools/"),
        ("post", f"/api/v1/boxes/{box.pk}/decommission"),
        ("post", f"/api/v1/boxes/{box.pk}/release-addresses"),
    ]:
        response = getattr(user_client, method)(url, {}, format="json")
        assert response.status_code == 403, (method, url)
    assert _bearer(provisioned["token"]).get("/api/v1/servers/").status_code == 403
    assert Box.objects.get(pk=box.pk).state == "unclaimed"


def test_list_endpoints_use_a_constant_number_of_queries(
    staff_client, region, make_server, make_pools, django_assert_max_num_queries
):
    for index in range(6):
        server, _ = make_server(region, capacity=5)
        make_pools(
            server=server,
            public=f"203.0.{index}.0/28",
            tunnel=f"100.64.{index}.0/28",
            ipv6=f"2001:db8:{index:x}00::/52",
        )
    with django_assert_max_num_queries(4):
        assert staff_client.get("/api/v1/servers/").json()["count"] == 6
    with django_assert_max_num_queries(4):
        assert staff_client.get("/api/v1/pools/").json()["count"] == 18


# --- staff box actions ------------------------------------------------------------------------------


def test_staff_box_actions(actor, org, staff_client, provisioned, region, make_server, make_pools, make_box):
    box = box_claim(actor=actor, organization=org, serial=make_box().serial, claim_code=CLAIM_CODE)
    other, _ = make_server(region, capacity=5)

    moved = staff_client.post(
        f"/api/v1/boxes/{box.pk}/reassign-server", {"server": str(other.pk)}, format="json"
    )
    assert moved.status_code == 200, moved.json()
    assert moved.json()["server"] == str(other.pk)

    revoked = staff_client.post(
        f"/api/v1/boxes/{box.pk}/revoke-credentials", {"reissue": True}, format="json"
    )
    assert revoked.status_code == 200

    released = staff_client.post(f"/api/v1/boxes/{box.pk}/release-addresses")
    assert released.status_code == 200
    assert not AddressAssignment.objects.filter(box=box, state=AssignmentState.ACTIVE).exists()

    gone = staff_client.post(f"/api/v1/boxes/{box.pk}/decommission")
    assert gone.status_code == 200 and gone.json()["state"] == "decommissioned"
    again = staff_client.post(f"/api/v1/boxes/{box.pk}/decommission")
    assert again.status_code == 409 and again.json()["error"]["code"] == "decommissioned"
    missing = staff_client.post("/api/v1/boxes/00000000-0000-0000-0000-000000000000/decommission")
    assert missing.status_code == 404
    assert AggregationServer.objects.get(pk=other.pk).assigned_boxes == 0
    actions = set(AuditLog.objects.filter(box=box).values_list("action", flat=True))
    assert {
        "box.reassign_server",
        "box.revoke_credentials",
        "box.release_addresses",
        "box.decommission",
    } <= actions


def test_schema_documents_the_provisioning_endpoints(staff_client):
    response = staff_client.get("/api/schema/", HTTP_ACCEPT="application/json")
    assert response.status_code == 200
    text = response.content.decode()
    for path in (
        "/api/v1/servers/self/peers",
        "/api/v1/pools/{pool_id}/",
        "/api/v1/boxes/{box_id}/decommission",
    ):
        assert path in text
