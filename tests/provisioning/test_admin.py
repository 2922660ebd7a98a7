"""Admin: creating and changing provisioning objects goes through the services; the box list (public
IP column, search by IP, no N+1), the CSV import and the support actions."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.messages import get_messages
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from fleet.core.choices import BoxState
from fleet.core.models import AuditLog, Box, Region
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


def _changelist_queries(client: Client) -> int:
    with CaptureQueriesContext(connection) as queries:
        response = client.get("/admin/fleet/box/")
    assert response.status_code == 200
    return len(queries)


def test_box_changelist_shows_public_ip_without_n_plus_1(
    superuser_client: Client, people: Any, claimed_box_factory: Any
) -> None:
    box = claimed_box_factory(people.org)
    response = superuser_client.get("/admin/fleet/box/")
    public_ip = Box.objects.filter(pk=box.pk).values_list("addresses__prefix", flat=True)
    assert any(str(prefix).split("/")[0] in response.content.decode() for prefix in public_ip)
    few = _changelist_queries(superuser_client)
    for _ in range(5):
        claimed_box_factory(people.org)
    assert _changelist_queries(superuser_client) == few


def test_box_search_matches_the_public_ip(
    superuser_client: Client, people: Any, claimed_box_factory: Any
) -> None:
    first = claimed_box_factory(people.org)
    claimed_box_factory(people.org)
    from provisioning.selectors.boxes import boxes_annotated

    address = boxes_annotated(Box.objects.filter(pk=first.pk)).get().public_ipv4
    assert address is not None
    response = superuser_client.get("/admin/fleet/box/", {"q": address})
    assert response.status_code == 200
    assert response.context["cl"].result_count == 1
    assert next(iter(response.context["cl"].result_list)).pk == first.pk


def test_box_import_view(superuser_client: Client) -> None:
    assert superuser_client.get("/admin/fleet/box/import/").status_code == 200
    upload = SimpleUploadedFile(
        "boxes.csv",
        b"serial,model,mac,factory_secret,claim_code\n"
        b"ADM-1,OTB,aa:bb:cc:dd:ee:01,factory-secret,claim-code-1\n"
        b"bad serial,OTB,,factory-secret,claim-code-2\n",
        content_type="text/csv",
    )
    response = superuser_client.post("/admin/fleet/box/import/", {"file": upload})
    assert response.status_code == 200
    assert response.context["report"].created == 1
    assert response.context["report"].errors[0].line == 3
    assert Box.objects.filter(serial="ADM-1").exists()


def test_box_actions_call_the_services_and_report_refusals(
    superuser_client: Client, people: Any, claimed_box_factory: Any, box_factory: Any
) -> None:
    box = claimed_box_factory(people.org)
    response = superuser_client.post(
        "/admin/fleet/box/", {"action": "decommission", "_selected_action": [str(box.pk)]}, follow=True
    )
    assert response.status_code == 200
    assert Box.objects.get(pk=box.pk).state == BoxState.DECOMMISSIONED
    assert AuditLog.objects.filter(box=box, actor_label="staff:root@example.com").exists()
    # a second decommission is refused by the service and reported, not a 500
    response = superuser_client.post(
        "/admin/fleet/box/", {"action": "decommission", "_selected_action": [str(box.pk)]}, follow=True
    )
    assert response.status_code == 200


def test_the_reassign_action_asks_first_saying_the_public_ip_changes(
    superuser_client: Client, people: Any, claimed_box_factory: Any, provisioned_region_factory: Any
) -> None:
    # given a claimed box and another server to move it to
    box = claimed_box_factory(people.org, "ADM-RE-1")
    provisioned_region_factory(
        "us-east", public="198.51.100.0/26", tunnel="100.65.0.0/24", ipv6="2001:db8:100::/44"
    )
    server_before = Box.objects.get(pk=box.pk).server_id
    selected = {"action": "reassign_server", "_selected_action": [str(box.pk)]}

    # when the action is chosen, a confirmation says the public IP changes, naming it, and nothing moves
    asked = superuser_client.post("/admin/fleet/box/", selected)
    content = asked.content.decode()
    assert asked.status_code == 200 and 'id="public-ip-change"' in content
    assert "public IP address changes" in content and "203.0.113.1" in content and "ADM-RE-1" in content
    assert Box.objects.get(pk=box.pk).server_id == server_before
    assert not AuditLog.objects.filter(action="box.reassign_server").exists()

    # when it is confirmed, the box moves and the message gives the old and new address
    done = superuser_client.post("/admin/fleet/box/", {**selected, "confirmed": "yes"}, follow=True)
    assert Box.objects.get(pk=box.pk).server_id != server_before
    messages = [str(message) for message in done.context["messages"]]
    assert "ADM-RE-1: public IP 203.0.113.1 → 198.51.100.1 (the customer is notified)." in messages
