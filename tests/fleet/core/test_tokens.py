"""Personal API tokens and enrollment tokens (fleet.core.services.tokens), and no token value stored
in any column."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.db import connection
from django.utils import timezone

from fleet.core.audit import Actor
from fleet.core.errors import Forbidden, InvalidInput
from fleet.core.models import AgentCredential, ApiToken, AuditLog, Box, EnrollmentToken, Invitation
from fleet.core.services import (
    api_token_create,
    api_token_revoke,
    enrollment_token_create,
    enrollment_token_revoke,
    member_invite,
)
from fleet.core.tokens import digest
from provisioning.services.enrollment import box_enroll
from tests.conftest import CLAIM_CODE, FACTORY_SECRET

pytestmark = pytest.mark.django_db


def _all_column_values(table: str) -> list[str]:
    with connection.cursor() as cursor:
        cursor.execute(f'SELECT * FROM "{table}"')
        return [str(value) for row in cursor.fetchall() for value in row if value is not None]


def test_api_token_needs_membership_and_a_bounded_lifetime(people: Any) -> None:
    actor = Actor.for_user(people.owner)
    with pytest.raises(Forbidden):
        api_token_create(actor=actor, user=people.owner, organization=people.other_org, name="x")
    with pytest.raises(InvalidInput) as exc:
        api_token_create(
            actor=actor, user=people.owner, organization=people.org, name="x", expires_in_days=366
        )
    assert exc.value.field == "expires_in_days"
    token, value = api_token_create(actor=actor, user=people.owner, organization=people.org, name="ci")
    assert value.startswith("otbu_")
    assert timedelta(days=89) < token.expires_at - timezone.now() <= timedelta(days=90)
    api_token_revoke(actor=actor, token=token)
    assert ApiToken.objects.get(pk=token.pk).revoked_at is not None


def test_enrollment_token_is_admin_or_owner_only(people: Any) -> None:
    with pytest.raises(Forbidden):
        enrollment_token_create(
            actor=Actor.for_user(people.viewer),
            organization=people.org,
            name="x",
            expires_in_hours=1,
            single_use=True,
        )
    token, _ = enrollment_token_create(
        actor=Actor.for_user(people.admin),
        organization=people.org,
        name="x",
        expires_in_hours=1,
        single_use=True,
    )
    enrollment_token_revoke(actor=Actor.for_user(people.admin), token=token)
    assert EnrollmentToken.objects.get(pk=token.pk).revoked_at is not None


def test_no_token_value_is_stored_in_any_column(
    people: Any, box_factory: Any, provisioned_region: Any, mailoutbox: Any
) -> None:
    # given every kind of token issued by the fleet services
    owner = Actor.for_user(people.owner)
    _, api_value = api_token_create(actor=owner, user=people.owner, organization=people.org, name="t")
    _, enroll_value = enrollment_token_create(
        actor=owner, organization=people.org, name="t", expires_in_hours=2, single_use=False
    )
    _, invite_value = member_invite(
        actor=owner, organization=people.org, email="z@example.com", role="viewer"
    )
    box = box_factory()
    _, agent_value = box_enroll(serial=box.serial, factory_secret=FACTORY_SECRET, source_ip="10.0.0.1")
    # when every row of the token tables (and the audit log) is scanned
    tables = [
        ApiToken._meta.db_table,
        EnrollmentToken._meta.db_table,
        Invitation._meta.db_table,
        AgentCredential._meta.db_table,
        Box._meta.db_table,
        AuditLog._meta.db_table,
    ]
    stored = [value for table in tables for value in _all_column_values(table)]
    # then no column holds a token value, and the digests are there
    for value in (api_value, enroll_value, invite_value, agent_value, FACTORY_SECRET, CLAIM_CODE):
        assert not any(value in cell for cell in stored), value
    assert digest(agent_value) in stored
