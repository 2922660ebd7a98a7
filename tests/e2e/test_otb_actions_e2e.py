"""The action queue of a stock OverTheBox box against a real uvicorn server (its idle polls answered by
the ASGI fast path, the rest by Django), with curl shaped like the box's ``otb_call``: a command created
through our REST API reaches the box as an action, the result lands, a second result is accepted, an
expired command is not delivered, another box's action is refused, and polls make the box present."""

from __future__ import annotations

import shutil
import time
from datetime import timedelta
from typing import Any

import httpx
import pytest
from django.utils import timezone

from fleet.commands.choices import CommandState
from fleet.commands.models import Command
from fleet.telemetry.models import BoxStatus
from otbcompat.models import OtbDevice
from otbcompat.presence import presence_flush
from tests.e2e.otbbox import linked_device, otb_call

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(shutil.which("curl") is None, reason="curl is needed to call like the box"),
]


def test_commands_reach_a_stock_box_and_results_land(
    asgi_server: Any, people: Any, claimed_box_factory: Any, api_token_factory: Any
) -> None:
    base = asgi_server.url
    box, other_box = claimed_box_factory(people.org), claimed_box_factory(people.org)
    device = linked_device(base, box, "00:0d:b9:4a:20:01")
    other = linked_device(base, other_box, "00:0d:b9:4a:20:02")
    todo = f"devices/{device['device_id']}/actions/todo"

    # idle: paced by wait
    assert otb_call(base, "GET", todo, jwt=device["jwt"]) == (
        200,
        {"id": None, "action": "wait", "arguments": {"delay": 10}},
    )

    # a command created through our API becomes the box's next action
    api = httpx.Client(
        base_url=base, headers={"Authorization": f"Bearer {api_token_factory(people.admin, people.org)}"}
    )
    created = api.post(
        f"/api/v1/boxes/{box.pk}/commands/",
        json={"kind": "restart_services", "params": {"services": ["glorytun"]}},
    )
    assert created.status_code == 201, created.text
    command_id = created.json()["id"]
    status, action = otb_call(base, "GET", todo, jwt=device["jwt"])
    assert status == 200
    assert action == {"id": command_id, "action": "restartServices", "arguments": {"services": ["glorytun"]}}
    assert otb_call(base, "GET", todo, jwt=device["jwt"])[1]["action"] == "wait"  # handed out once

    # the box reports, as otb-daemon does (jq -c of status and details)
    result = f"devices/{device['device_id']}/actions/{command_id}"
    assert (
        otb_call(base, "PUT", result, {"status": "done", "details": "restarted\n"}, jwt=device["jwt"])[0]
        == 200
    )
    seen = api.get(f"/api/v1/commands/{command_id}/").json()
    assert seen["state"] == "succeeded" and seen["result"]["details"] == "restarted\n"
    # a second result for the same action is accepted and kept; the state does not move
    assert otb_call(base, "PUT", result, {"status": "error", "details": "late"}, jwt=device["jwt"])[0] == 200
    seen = api.get(f"/api/v1/commands/{command_id}/").json()
    assert seen["state"] == "succeeded" and seen["result"]["late_reports"][0]["status"] == "error"

    # an expired command is never delivered
    expired = api.post(f"/api/v1/boxes/{box.pk}/commands/", json={"kind": "reboot"}).json()["id"]
    Command.objects.filter(pk=expired).update(expires_at=timezone.now() - timedelta(seconds=1))
    assert otb_call(base, "GET", todo, jwt=device["jwt"])[1]["action"] == "wait"
    assert Command.objects.get(pk=expired).delivery_count == 0

    # another box's action: refused, untouched
    theirs = api.post(f"/api/v1/boxes/{other_box.pk}/commands/", json={"kind": "reboot"}).json()["id"]
    status, error = otb_call(
        base, "PUT", f"devices/{device['device_id']}/actions/{theirs}", {"status": "done"}, jwt=device["jwt"]
    )
    assert status == 404 and error["class"] == "Client::NotFound"
    status, error = otb_call(base, "GET", f"devices/{other['device_id']}/actions/todo", jwt=device["jwt"])
    assert status == 403 and error["class"] == "Client::Forbidden"
    assert Command.objects.get(pk=theirs).state == CommandState.PENDING

    # a bad JWT on the fast path's route still gets the class the box acts on
    status, error = otb_call(base, "GET", todo, jwt=device["jwt"][:-3] + "AAA")
    assert status == 401 and error["class"] == "Client::Unauthorized"


def test_polls_make_a_stock_box_present(asgi_server: Any, people: Any, claimed_box_factory: Any) -> None:
    base = asgi_server.url
    box = claimed_box_factory(people.org)
    device = linked_device(base, box, "00:0d:b9:4a:20:03")
    BoxStatus.objects.update_or_create(box=box, defaults={"online": False})
    presence_flush()
    for _ in range(3):
        assert (
            otb_call(base, "GET", f"devices/{device['device_id']}/actions/todo", jwt=device["jwt"])[0] == 200
        )
    assert not BoxStatus.objects.get(box=box).online  # no database write per poll
    # the server's fast path writes its polls to Redis once a second; the flush then writes them
    deadline = time.monotonic() + 10
    while not BoxStatus.objects.get(box=box).online and time.monotonic() < deadline:
        time.sleep(0.5)
        presence_flush()
    status = BoxStatus.objects.get(box=box)
    assert status.online and status.firmware_version == "1.1.3"
    assert OtbDevice.objects.get(id=device["device_id"]).last_seen_at is not None
