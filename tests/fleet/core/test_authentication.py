"""Personal API tokens through the real API: one query reads the token, its user, its organisation and
the user's role there; every way a token stops being good is refused."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from rest_framework.test import APIClient

from fleet.core.choices import Role
from fleet.core.models import ApiToken, Membership

pytestmark = pytest.mark.django_db


BOXES = "/api/v1/boxes/"


@pytest.fixture
def token(people: Any, api_token_factory: Any) -> str:
    return str(api_token_factory(people.admin, people.org))


def client_of(token: str) -> APIClient:
    return APIClient(HTTP_AUTHORIZATION=f"Bearer {token}")


def test_a_live_token_reads_token_user_organisation_and_role_in_one_query(token: str, people: Any) -> None:
    client = client_of(token)
    client.get(BOXES)  # warm caches (content types, etc.)
    with CaptureQueriesContext(connection) as queries:
        response = client.get(BOXES)
    assert response.status_code == 200
    token_reads = [query["sql"] for query in queries if "fleet_apitoken" in query["sql"]]
    assert len(token_reads) == 1
    # the role comes with the token: no separate membership-role read
    assert not any('"fleet_membership"."role"' in query["sql"] for query in queries)


@pytest.mark.parametrize(
    "spoil",
    [
        lambda people: ApiToken.objects.update(revoked_at=timezone.now()),
        lambda people: ApiToken.objects.update(expires_at=timezone.now() - timedelta(seconds=1)),
        lambda people: type(people.admin).objects.filter(pk=people.admin.pk).update(is_active=False),
    ],
    ids=["revoked", "expired", "user-deactivated"],
)
def test_a_spoiled_token_is_refused_with_401(token: str, people: Any, spoil: Any) -> None:
    spoil(people)
    response = client_of(token).get(BOXES)
    assert response.status_code == 401
    assert "token" in str(response.json()).lower()


def test_a_token_whose_user_left_the_organisation_reads_nothing(
    token: str, people: Any, box_factory: Any
) -> None:
    box_factory(organization=people.org)
    assert client_of(token).get(BOXES).json()["count"] == 1
    Membership.objects.filter(user=people.admin, organization=people.org).delete()
    response = client_of(token).get(BOXES)
    assert response.status_code in (200, 403)
    assert response.status_code == 403 or response.json()["count"] == 0


def test_the_role_read_with_the_token_is_enforced(people: Any, api_token_factory: Any) -> None:
    viewer_token = api_token_factory(people.viewer, people.org)
    Membership.objects.filter(user=people.viewer, organization=people.org).update(role=Role.VIEWER)
    client = client_of(viewer_token)
    assert client.get(BOXES).status_code == 200
    response = client.post("/api/v1/boxes/claim", {"serial": "X", "claim_code": "Y"}, format="json")
    assert response.status_code == 403
