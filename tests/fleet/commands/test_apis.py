"""Commands REST API: who may list, create and cancel; errors; a fixed query count on the list."""

from __future__ import annotations

from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from fleet.commands.models import Command
from fleet.commands.services import command_create
from fleet.core.audit import Actor

pytestmark = pytest.mark.django_db


@pytest.fixture
def box(people: Any, box_factory: Any) -> Any:
    return box_factory(organization=people.org)


def url(box: Any) -> str:
    return f"/api/v1/boxes/{box.pk}/commands/"


def test_admin_creates_and_viewer_reads(people: Any, box: Any, client_for: Any) -> None:
    # given an admin
    # when they post a speed test
    response = client_for(people.admin).post(
        url(box), {"kind": "speed_test", "params": {"bytes": 1_000_000}, "ttl_s": 600}, format="json"
    )
    # then it is created pending, and a viewer can see it in the list and in detail
    assert response.status_code == 201, response.content
    body = response.json()
    assert (
        body["state"] == "pending"
        and body["kind"] == "speed_test"
        and body["created_by"] == "admin@example.com"
    )
    viewer = client_for(people.viewer)
    listed = viewer.get(url(box)).json()
    assert [item["id"] for item in listed["results"]] == [body["id"]]
    assert viewer.get(f"/api/v1/commands/{body['id']}/").json()["params"]["bytes"] == 1_000_000


def test_viewer_cannot_create(people: Any, box: Any, client_for: Any) -> None:
    response = client_for(people.viewer).post(url(box), {"kind": "reboot"}, format="json")
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "forbidden"
    assert not Command.objects.exists()


def test_other_organisation_is_not_found(people: Any, box: Any, client_for: Any) -> None:
    command = command_create(actor=Actor.for_user(people.admin), box=box, kind="reboot")
    outsider = client_for(people.outsider)
    assert outsider.get(url(box)).status_code == 404
    assert outsider.post(url(box), {"kind": "reboot"}, format="json").status_code == 404
    assert outsider.get(f"/api/v1/commands/{command.pk}/").status_code == 404
    assert outsider.post(f"/api/v1/commands/{command.pk}/cancel").status_code == 404
    assert client_for(people.admin).get("/api/v1/commands/not-a-uuid/").status_code == 404
    assert client_for(None).get(url(box)).status_code in (401, 403)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"kind": "speed_test", "params": {"bytes": 200_000_000}}, "params.bytes"),
        ({"kind": "reboot", "ttl_s": 999_999}, "ttl_s"),
        ({"kind": "firmware_upgrade"}, "kind"),
        ({"kind": "nope"}, "kind"),
        ({"kind": "reboot", "ttl_s": "soon"}, "ttl_s"),
    ],
)
def test_bad_input_is_a_400_naming_the_field(
    people: Any, box: Any, client_for: Any, body: dict[str, Any], field: str
) -> None:
    response = client_for(people.admin).post(url(box), body, format="json")
    assert response.status_code == 400, response.content
    assert field in response.json()["error"]["fields"]
    assert not Command.objects.exists()


def test_cancel(people: Any, box: Any, client_for: Any) -> None:
    command = command_create(actor=Actor.for_user(people.admin), box=box, kind="reboot")
    assert client_for(people.viewer).post(f"/api/v1/commands/{command.pk}/cancel").status_code == 403
    response = client_for(people.owner).post(f"/api/v1/commands/{command.pk}/cancel")
    assert response.status_code == 200 and response.json()["state"] == "cancelled"
    again = client_for(people.owner).post(f"/api/v1/commands/{command.pk}/cancel")
    assert again.status_code == 409


def test_list_query_count_does_not_grow(people: Any, box: Any, client_for: Any, settings: Any) -> None:
    # given a viewer's client and one command (and room for many waiting commands)
    settings.OTB = {**settings.OTB, "MAX_OPEN_COMMANDS_PER_BOX": 100}
    client = client_for(people.viewer)
    actor = Actor.for_user(people.admin)
    command_create(actor=actor, box=box, kind="reboot")
    client.get(url(box))  # warm the session
    with CaptureQueriesContext(connection) as one:
        assert client.get(url(box)).status_code == 200
    # when there are many more commands
    for _ in range(15):
        command_create(actor=actor, box=box, kind="diagnostics")
    with CaptureQueriesContext(connection) as many:
        response = client.get(url(box) + "?kind=diagnostics")
    # then the list costs the same number of queries
    assert response.json()["count"] == 15
    assert len(many) == len(one)
