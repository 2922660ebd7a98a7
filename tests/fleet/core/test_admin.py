"""The fleet core admin: personal API tokens (the hash hidden, revocation) and the read-only,
searchable audit log."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client

from fleet.core.models import ApiToken, AuditLog

pytestmark = pytest.mark.django_db


def test_token_admin_hides_the_hash_and_revokes(
    superuser_client: Client, people: Any, api_token_factory: Any
) -> None:
    api_token_factory(people.owner, people.org)
    token = ApiToken.objects.get()
    page = superuser_client.get(f"/admin/fleet/apitoken/{token.pk}/change/").content.decode()
    assert token.token_hash not in page
    superuser_client.post("/admin/fleet/apitoken/", {"action": "revoke", "_selected_action": [str(token.pk)]})
    assert ApiToken.objects.get(pk=token.pk).revoked_at is not None


def test_audit_admin_is_read_only_and_searchable(
    superuser_client: Client, people: Any, claimed_box_factory: Any
) -> None:
    box = claimed_box_factory(people.org)
    response = superuser_client.get("/admin/fleet/auditlog/", {"q": box.serial})
    assert response.status_code == 200
    assert response.context["cl"].result_count >= 1
    entry = AuditLog.objects.filter(box=box).first()
    assert entry is not None
    assert superuser_client.post(f"/admin/fleet/auditlog/{entry.pk}/delete/").status_code == 403
