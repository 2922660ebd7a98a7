"""The box endpoints: the list (the same queries for 1 and 100 boxes, filters), claim, WAN policy,
rename, unclaim, transfer, and the audit record of a claim."""

from __future__ import annotations

from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from fleet.core.choices import BoxState
from fleet.core.models import AuditLog, Box, Membership
from tests.conftest import CLAIM_CODE

pytestmark = pytest.mark.django_db


def _boxes_list_queries(client: Any) -> tuple[int, Any]:
    with CaptureQueriesContext(connection) as queries:
        response = client.get("/api/v1/boxes/?limit=500")
    assert response.status_code == 200
    return len(queries), response.json()


def test_box_list_runs_the_same_queries_for_1_and_100_boxes(
    client_for: Any, people: Any, box_factory: Any, claimed_box_factory: Any, django_assert_num_queries: Any
) -> None:
    client = client_for(people.viewer)
    claimed_box_factory(people.org)
    with django_assert_num_queries(5):  # session, user, memberships, count, page
        one = client.get("/api/v1/boxes/?limit=500").json()
    assert one["count"] == 1 and one["results"][0]["public_ipv4"]
    for _ in range(9):
        claimed_box_factory(people.org)
    for _ in range(90):
        box_factory(organization=people.org)
    box_factory(organization=people.other_org)
    with django_assert_num_queries(5):
        hundred = client.get("/api/v1/boxes/?limit=500").json()
    assert hundred["count"] == 100
    assert sum(1 for box in hundred["results"] if box["public_ipv4"]) == 10


def test_box_list_filters(client_for: Any, people: Any, box_factory: Any, claimed_box_factory: Any) -> None:
    client = client_for(people.owner)
    paris = claimed_box_factory(people.org, name="Paris office")
    box_factory(organization=people.org, serial="TAGGED-1", tags=["retail"], config_hash="a" * 64)
    Box.objects.filter(pk=paris.pk).update(applied_config_hash=paris.config_hash)

    def serials(query: str) -> set[str]:
        response = client.get(f"/api/v1/boxes/?{query}")
        assert response.status_code == 200, response.content
        return {box["serial"] for box in response.json()["results"]}

    assert serials("q=paris") == {paris.serial}
    assert serials("tag=retail") == {"TAGGED-1"}
    assert serials("drift=true") == {"TAGGED-1"}
    assert serials("drift=false") == {paris.serial}
    assert serials("region=eu-west") == {paris.serial}
    assert serials(f"server={paris.server_id}") == {paris.serial}
    assert serials("state=unclaimed") == set()
    assert client.get("/api/v1/boxes/?state=bogus").status_code == 400


def test_claim_wan_policy_unclaim(
    client_for: Any, people: Any, box_factory: Any, provisioned_region: Any
) -> None:
    admin = client_for(people.admin)
    box = box_factory()
    # claim (organization inferred: the admin is a member of one organisation)
    response = admin.post(
        "/api/v1/boxes/claim", {"serial": box.serial, "claim_code": CLAIM_CODE}, format="json"
    )
    assert response.status_code == 201, response.content
    assert response.json()["organization"]["id"] == str(people.org.pk)
    assert response.json()["public_ipv4"]
    # the claim answers from the placement without re-reading the box: it must say exactly what a
    # read of the box says (server, region, public address, hashes, timestamps)
    assert response.json() == admin.get(f"/api/v1/boxes/{box.pk}/").json()
    # claiming it again changes nothing: 200 (not 201) with the same box (read back this time)
    again = admin.post("/api/v1/boxes/claim", {"serial": box.serial, "claim_code": CLAIM_CODE}, format="json")
    assert again.status_code == 200 and again.json() == response.json()
    assert AuditLog.objects.filter(action="box.claim", box=box).count() == 1
    # wan policy
    url = f"/api/v1/boxes/{box.pk}/wan-policy"
    policy = {
        "mode": "aggregate",
        "interfaces": [{"name": "wan1", "kind": "fiber"}, {"name": "lte0", "kind": "lte"}],
    }
    response = admin.put(url, policy, format="json")
    assert response.status_code == 200, response.content
    assert client_for(people.viewer).get(url).json()["mode"] == "aggregate"
    assert response.json()["download_kbps"] is None and response.json()["upload_kbps"] is None
    limited = admin.put(url, {**policy, "download_kbps": 30_000, "upload_kbps": 5_000}, format="json")
    assert (limited.json()["download_kbps"], limited.json()["upload_kbps"]) == (30_000, 5_000)
    bad = admin.put(url, {"mode": "aggregate", "interfaces": [{"name": "a"}, {"name": "a"}]}, format="json")
    assert bad.status_code == 400 and "interfaces[1].name" in bad.json()["error"]["fields"]
    # rename
    response = admin.patch(f"/api/v1/boxes/{box.pk}/", {"name": "Lyon", "tags": ["shop"]}, format="json")
    assert response.json()["name"] == "Lyon" and response.json()["tags"] == ["shop"]
    # audit trail of the box
    actions = {entry["action"] for entry in admin.get(f"/api/v1/boxes/{box.pk}/audit").json()["results"]}
    assert {"box.claim", "box.set_wan_policy", "box.update"} <= actions
    # unclaim
    response = admin.post(f"/api/v1/boxes/{box.pk}/unclaim")
    assert response.status_code == 200, response.content
    assert Box.objects.get(pk=box.pk).state == BoxState.UNCLAIMED


def test_transfer_needs_owner_of_source_and_admin_of_target(
    client_for: Any, people: Any, claimed_box_factory: Any
) -> None:
    box = claimed_box_factory(people.org)
    Membership.objects.create(user=people.owner, organization=people.other_org, role="admin")
    Membership.objects.create(user=people.admin, organization=people.other_org, role="admin")
    body = {"organization": str(people.other_org.pk)}
    # an admin of the source may not transfer
    assert (
        client_for(people.admin).post(f"/api/v1/boxes/{box.pk}/transfer", body, format="json").status_code
        == 403
    )
    response = client_for(people.owner).post(f"/api/v1/boxes/{box.pk}/transfer", body, format="json")
    assert response.status_code == 200, response.content
    assert Box.objects.get(pk=box.pk).organization_id == people.other_org.pk


def test_a_serial_typed_in_lower_case_claims_the_box(
    client_for: Any, people: Any, box_factory: Any, provisioned_region: Any
) -> None:
    # given a box labelled DEMO-0011
    box = box_factory("DEMO-0011")
    # when it is claimed as demo-0011
    response = client_for(people.admin).post(
        "/api/v1/boxes/claim", {"serial": "demo-0011", "claim_code": CLAIM_CODE}, format="json"
    )
    # then that box is claimed, under its real serial
    assert response.status_code == 201, response.content
    assert response.json()["id"] == str(box.pk) and response.json()["serial"] == "DEMO-0011"


def test_claims_refused_after_failures_say_how_long_to_wait_and_spare_the_owner(
    client_for: Any, people: Any, box_factory: Any, provisioned_region: Any, settings: Any
) -> None:
    # given another organisation's owner failing five times on a box's serial
    settings.OTB = {**settings.OTB, "CLAIM_MAX_FAILURES": 5, "AUTH_FAILURE_WINDOW_S": 900}
    box = box_factory("DEMO-0021")
    outsider = client_for(people.outsider)
    body = {"serial": "DEMO-0021", "claim_code": "guess-guess"}
    for _ in range(5):
        assert outsider.post("/api/v1/boxes/claim", body, format="json").status_code == 400
    # when it tries again, then it is refused with the time to wait, in the header and in words
    refused = outsider.post("/api/v1/boxes/claim", body, format="json")
    assert refused.status_code == 429
    assert 890 <= int(refused["Retry-After"]) <= 900
    assert refused.json()["error"]["code"] == "rate_limited"
    assert refused.json()["error"]["message"] == (
        "Too many failed claim attempts for this serial number. Try again in 15 minutes."
    )
    # and the organisation holding the claim code still claims the box
    response = client_for(people.admin).post(
        "/api/v1/boxes/claim", {"serial": "DEMO-0021", "claim_code": CLAIM_CODE}, format="json"
    )
    assert response.status_code == 201, response.content
    assert Box.objects.get(pk=box.pk).organization_id == people.org.pk


def test_a_claim_is_audited_with_who_from_where_and_the_request_id(
    client_for: Any, people: Any, box_factory: Any, provisioned_region: Any
) -> None:
    admin = client_for(people.admin)
    box = box_factory()
    response = admin.post(
        "/api/v1/boxes/claim",
        {"serial": box.serial, "claim_code": CLAIM_CODE},
        format="json",
        HTTP_X_REQUEST_ID="claim-audit-1",
        REMOTE_ADDR="192.0.2.7",
    )
    assert response.status_code == 201, response.content
    entry = AuditLog.objects.get(action="box.claim", box=box)
    assert entry.actor_id == people.admin.pk
    assert entry.actor_label == f"user:{people.admin.get_username()}"
    assert entry.organization_id == people.org.pk
    assert entry.target_type == "box" and entry.target_id == str(box.pk)
    assert entry.before == {"state": "unclaimed", "organization": None}
    assert entry.after == {"state": "claimed", "organization": str(people.org.pk)}
    assert entry.request_id == response["X-Request-ID"] == "claim-audit-1"
    assert entry.source_ip == "192.0.2.7"
