"""The fleet core's management commands: create_organization and create_api_token."""

from __future__ import annotations

import io
from typing import Any

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from rest_framework.test import APIClient

from fleet.core.models import Membership, Organization
from tests.conftest import management_command_run as run

pytestmark = pytest.mark.django_db


def test_create_organization_and_api_token(capsys: Any) -> None:
    # given an organisation created from the command line
    run("create_organization", "Initech", "--owner", "boss@initech.example", "--password", "pw-initech-1")
    organization = Organization.objects.get(name="Initech")
    assert Membership.objects.get(organization=organization).user.email == "boss@initech.example"
    # when a token is created for its owner
    status, output = run(
        "create_api_token", "boss@initech.example", "--organization", "initech", "--days", "3"
    )
    token = output.strip()
    # then the printed token works against the API
    assert status == 0 and token.startswith("otbu_")
    response = APIClient().get("/api/v1/me", HTTP_AUTHORIZATION=f"Bearer {token}")
    assert response.status_code == 200
    assert response.json()["memberships"][0]["organization"]["name"] == "Initech"
    with pytest.raises(CommandError):
        call_command(
            "create_api_token", "nobody@example.com", "--organization", "Initech", stdout=io.StringIO()
        )
    with pytest.raises(CommandError):
        call_command("create_organization", "Initech", "--owner", "x@example.com", stdout=io.StringIO())
