"""fleet REST endpoints: the agent's config/ETag/applied/speedtest/enroll, people, tokens, boxes."""

from __future__ import annotations

from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from fleet.core.audit import Actor
from fleet.core.choices import BoxState
from fleet.core.models import AgentCredential, ApiToken, AuditLog, Box, EnrollmentToken, Membership
from provisioning.services.configuration import box_set_wan_policy
from tests.conftest import CLAIM_CODE, FACTORY_SECRET, WG_KEY

pytestmark = pytest.mark.django_db


def bearer(token: str) -> dict[str, str]:
    return {"HTTP_AUTHORIZATION": f"Bearer {token}"}


# -- agent -----------------------------------------------------------------------------------------


def test_enroll_returns_the_agent_token_once(
    api_client: Any, box_factory: Any, provisioned_region: Any
) -> None:
    box = box_factory()
    response = api_client.post(
        "/api/v1/agent/enroll",
        {
            "serial": box.serial,
            "factory_secret": FACTORY_SECRET,
            "wg_public_key": WG_KEY,
            "agent_version": "1.0",
        },
        format="json",
    )
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["box_id"] == str(box.pk) and body["serial"] == box.serial
    assert body["agent_token"].startswith("otba_")
    assert api_client.get("/api/v1/agent/config", **bearer(body["agent_token"])).status_code == 200


def test_enroll_with_a_wrong_secret_is_401_then_429(api_client: Any, box_factory: Any, settings: Any) -> None:
    settings.OTB = {**settings.OTB, "ENROLL_MAX_FAILURES": 2}
    box = box_factory()
    payload = {"serial": box.serial, "factory_secret": "wrong-secret"}
    for _ in range(2):
        response = api_client.post("/api/v1/agent/enroll", payload, format="json")
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "enroll_failed"
    response = api_client.post(
        "/api/v1/agent/enroll", {"serial": box.serial, "factory_secret": FACTORY_SECRET}, format="json"
    )
    assert response.status_code == 429
    assert int(response["Retry-After"]) > 0
    assert response.json()["error"]["code"] == "rate_limited"
    assert not AgentCredential.objects.exists()


def test_config_etag_and_304_hot_path_is_one_query(
    api_client: Any, people: Any, claimed_box_factory: Any, agent_token_factory: Any
) -> None:
    # given an enrolled, provisioned box
    box = claimed_box_factory(people.org)
    token = agent_token_factory(box)
    # when it fetches its config
    first = api_client.get("/api/v1/agent/config", **bearer(token))
    # then it gets the document with its hash as a strong ETag
    assert first.status_code == 200
    config_hash = first.json()["config_hash"]
    assert first["ETag"] == f'"{config_hash}"'
    assert config_hash == Box.objects.get(pk=box.pk).config_hash
    assert first.json()["server"]
    # and when it polls with that ETag, the answer is an empty 304 after a single query
    with CaptureQueriesContext(connection) as queries:
        again = api_client.get("/api/v1/agent/config", HTTP_IF_NONE_MATCH=f'"{config_hash}"', **bearer(token))
    assert again.status_code == 304
    assert again.content == b""
    assert len(queries) == 1, [query["sql"] for query in queries]


def test_config_changes_after_a_wan_policy_change(
    api_client: Any, people: Any, claimed_box_factory: Any, agent_token_factory: Any
) -> None:
    box = claimed_box_factory(people.org)
    token = agent_token_factory(box)
    old_hash = api_client.get("/api/v1/agent/config", **bearer(token)).json()["config_hash"]
    box_set_wan_policy(
        actor=Actor.for_user(people.owner),
        box=box,
        mode="failover",
        interfaces=[{"name": "wan1", "role": "primary"}],
    )
    response = api_client.get("/api/v1/agent/config", HTTP_IF_NONE_MATCH=f'"{old_hash}"', **bearer(token))
    assert response.status_code == 200
    assert response.json()["config_hash"] != old_hash
    assert response.json()["wan_policy"]["mode"] == "failover"


def test_config_of_a_box_without_hash_is_built_once(
    api_client: Any, box_factory: Any, agent_token_factory: Any
) -> None:
    box = box_factory()
    assert box.config_hash == ""
    token = agent_token_factory(box)
    response = api_client.get("/api/v1/agent/config", **bearer(token))
    assert response.status_code == 200
    assert Box.objects.get(pk=box.pk).config_hash == response.json()["config_hash"]


def test_config_applied_is_recorded(
    api_client: Any, people: Any, claimed_box_factory: Any, agent_token_factory: Any
) -> None:
    box = claimed_box_factory(people.org)
    token = agent_token_factory(box)
    response = api_client.post(
        "/api/v1/agent/config/applied",
        {"config_hash": box.config_hash, "error": None},
        format="json",
        **bearer(token),
    )
    assert response.status_code == 200, response.content
    assert response.json()["drift"] is False
    assert Box.objects.get(pk=box.pk).applied_config_hash == box.config_hash


def test_speedtest_streams_the_asked_number_of_zero_bytes(
    api_client: Any, box_factory: Any, agent_token_factory: Any
) -> None:
    token = agent_token_factory(box_factory())
    response = api_client.get("/api/v1/agent/speedtest?bytes=3000000", **bearer(token))
    assert response.status_code == 200
    payload = b"".join(response.streaming_content)
    assert len(payload) == 3_000_000 and payload.count(0) == 3_000_000
    for bad in ("104857601", "-1", "ten", "1e6"):
        response = api_client.get(f"/api/v1/agent/speedtest?bytes={bad}", **bearer(token))
        assert response.status_code == 400
        assert "bytes" in response.json()["error"]["fields"]


# -- people ----------------------------------------------------------------------------------------


def test_me_lists_memberships(client_for: Any, people: Any) -> None:
    body = client_for(people.admin).get("/api/v1/me").json()
    assert body["email"] == "admin@example.com"
    assert [(m["organization"]["name"], m["role"]) for m in body["memberships"]] == [("Acme", "admin")]


def test_organization_patch(client_for: Any, people: Any, provisioned_region: Any) -> None:
    response = client_for(people.admin).patch(
        f"/api/v1/organizations/{people.org.pk}/",
        {"timezone": "Europe/Berlin", "preferred_region": "eu-west"},
        format="json",
    )
    assert response.status_code == 200, response.content
    assert response.json()["preferred_region"]["code"] == "eu-west"
    response = client_for(people.admin).patch(
        f"/api/v1/organizations/{people.org.pk}/", {"timezone": "Mars/Olympus"}, format="json"
    )
    assert response.status_code == 400 and "timezone" in response.json()["error"]["fields"]


def test_members_role_change_and_removal(client_for: Any, people: Any) -> None:
    owner = client_for(people.owner)
    viewer_membership = Membership.objects.get(user=people.viewer, organization=people.org)
    url = f"/api/v1/organizations/{people.org.pk}/members/{viewer_membership.pk}/"
    assert owner.patch(url, {"role": "admin"}, format="json").json()["role"] == "admin"
    assert owner.delete(url).status_code == 204
    assert not Membership.objects.filter(pk=viewer_membership.pk).exists()
    members = owner.get(f"/api/v1/organizations/{people.org.pk}/members/").json()
    assert {m["user"]["email"] for m in members["results"]} == {"owner@example.com", "admin@example.com"}


def test_invitation_flow(
    client_for: Any, people: Any, user_factory: Any, mailoutbox: Any, django_capture_on_commit_callbacks: Any
) -> None:
    with django_capture_on_commit_callbacks(execute=True):
        response = client_for(people.owner).post(
            f"/api/v1/organizations/{people.org.pk}/invitations/",
            {"email": "newbie@example.com", "role": "viewer"},
            format="json",
        )
    assert response.status_code == 201, response.content
    assert "token" not in response.json()
    token = next(word for word in mailoutbox[0].body.split() if word.startswith("otbi_"))
    newbie = user_factory("newbie@example.com")
    response = client_for(newbie).post("/api/v1/invitations/accept", {"token": token}, format="json")
    assert response.status_code == 201
    assert Membership.objects.get(user=newbie).role == "viewer"


def test_api_token_lifecycle(api_client: Any, client_for: Any, people: Any) -> None:
    owner = client_for(people.owner)
    # when a token is created, its value is shown once
    response = owner.post(
        "/api/v1/tokens/",
        {"name": "ci", "organization": str(people.org.pk), "expires_in_days": 7},
        format="json",
    )
    assert response.status_code == 201, response.content
    created = response.json()
    value = created["token"]
    listed = owner.get("/api/v1/tokens/").json()["results"]
    assert [t["id"] for t in listed] == [created["id"]] and "token" not in listed[0]
    # then it authenticates, narrowed to its organisation
    me = api_client.get("/api/v1/me", **bearer(value)).json()
    assert [m["organization"]["name"] for m in me["memberships"]] == ["Acme"]
    # and after revocation it does not
    assert owner.delete(f"/api/v1/tokens/{created['id']}/").status_code == 204
    assert api_client.get("/api/v1/me", **bearer(value)).status_code == 401
    # another user's token is not found
    other = ApiToken.objects.create(
        user=people.admin,
        organization=people.org,
        name="x",
        token_prefix="otbu_x",
        token_hash="0" * 64,
        expires_at=ApiToken.objects.get(pk=created["id"]).expires_at,
    )
    assert owner.delete(f"/api/v1/tokens/{other.pk}/").status_code == 404


def test_enrollment_token_api(client_for: Any, people: Any, api_client: Any, provisioned_region: Any) -> None:
    admin = client_for(people.admin)
    url = f"/api/v1/organizations/{people.org.pk}/enrollment-tokens/"
    response = admin.post(url, {"name": "batch-1", "expires_in_hours": 48, "single_use": True}, format="json")
    assert response.status_code == 201, response.content
    value = response.json()["token"]
    assert value.startswith("otbe_")
    enrolled = api_client.post(
        "/api/v1/agent/enroll", {"serial": "FIELD-0001", "enrollment_token": value}, format="json"
    )
    assert enrolled.status_code == 201, enrolled.content
    assert Box.objects.get(serial="FIELD-0001").organization_id == people.org.pk
    token_id = response.json()["id"]
    assert admin.get(url).json()["results"][0]["uses"] == 1
    assert admin.delete(f"{url}{token_id}/").status_code == 204
    assert EnrollmentToken.objects.get(pk=token_id).revoked_at is not None


# -- boxes -----------------------------------------------------------------------------------------


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
    # claiming it again answers the same box (read back this time)
    again = admin.post("/api/v1/boxes/claim", {"serial": box.serial, "claim_code": CLAIM_CODE}, format="json")
    assert again.status_code == 201 and again.json() == response.json()
    # wan policy
    url = f"/api/v1/boxes/{box.pk}/wan-policy"
    policy = {
        "mode": "aggregate",
        "interfaces": [{"name": "wan1", "kind": "fiber"}, {"name": "lte0", "kind": "lte"}],
    }
    response = admin.put(url, policy, format="json")
    assert response.status_code == 200, response.content
    assert client_for(people.viewer).get(url).json()["mode"] == "aggregate"
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


def test_audit_list_is_scoped(client_for: Any, people: Any, claimed_box_factory: Any) -> None:
    claimed_box_factory(people.org)
    claimed_box_factory(people.other_org)
    staff = client_for(people.staff).get("/api/v1/audit/?action=box.claim").json()
    assert staff["count"] == 2
    owner = client_for(people.owner).get("/api/v1/audit/?action=box.claim").json()
    assert owner["count"] == 1 and owner["results"][0]["organization_id"] == str(people.org.pk)
    assert client_for(people.viewer).get("/api/v1/audit/").json()["count"] == 0
    assert AuditLog.objects.filter(action="box.claim").count() == 2


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
