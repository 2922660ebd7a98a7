"""The fleet admin: box list (public IP column, search by IP, no N+1), CSV import, support actions."""

from __future__ import annotations

from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from fleet.core.choices import BoxState
from fleet.core.models import ApiToken, AuditLog, Box

pytestmark = pytest.mark.django_db


@pytest.fixture
def superuser_client(user_factory: Any) -> Client:
    client = Client()
    client.force_login(user_factory("root@example.com", is_staff=True, is_superuser=True))
    return client


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
