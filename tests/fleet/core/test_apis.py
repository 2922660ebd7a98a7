"""The fleet core's REST endpoints: the person (me), organisations, members, invitations, personal
API tokens and enrollment tokens, the audit trail."""

from __future__ import annotations

from typing import Any

import pytest

from fleet.core.models import ApiToken, AuditLog, Box, EnrollmentToken, Membership
from tests.conftest import bearer

pytestmark = pytest.mark.django_db


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


# -- audit -----------------------------------------------------------------------------------------


def test_audit_list_is_scoped(client_for: Any, people: Any, claimed_box_factory: Any) -> None:
    claimed_box_factory(people.org)
    claimed_box_factory(people.other_org)
    staff = client_for(people.staff).get("/api/v1/audit/?action=box.claim").json()
    assert staff["count"] == 2
    owner = client_for(people.owner).get("/api/v1/audit/?action=box.claim").json()
    assert owner["count"] == 1 and owner["results"][0]["organization_id"] == str(people.org.pk)
    assert client_for(people.viewer).get("/api/v1/audit/").json()["count"] == 0
    assert AuditLog.objects.filter(action="box.claim").count() == 2
