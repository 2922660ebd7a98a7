"""The action queue of stock OverTheBox boxes: ``actions/todo`` (derived actions, our commands mapped to
OTB actions, pacing) and the results the box PUTs back, with requests shaped like the box's otb_call.
Presence from polls (Redis, flushed in batches) is checked here too."""

from __future__ import annotations

import json
import time
from datetime import timedelta
from typing import Any

import pytest
from django.db import connection
from django.db.models import F
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from fleet.commands.choices import CommandKind, CommandState
from fleet.commands.models import Command
from fleet.commands.services import command_create
from fleet.core.audit import Actor
from fleet.core.choices import BoxProtocol
from fleet.core.models import Box, Event
from fleet.telemetry.models import BoxStatus
from otbcompat.actions import ACTIONS
from otbcompat.models import OtbDevice
from otbcompat.presence import presence_flush

pytestmark = pytest.mark.django_db

SYSTEM = Actor.system("test")


def otb_call(
    client: Client, method: str, path: str, body: Any = None, jwt: str = "", raw: str | None = None
) -> Any:
    headers: dict[str, Any] = {"HTTP_X_OVERTHEBOX_VERSION": "1.1.3"}
    if jwt:
        headers["HTTP_AUTHORIZATION"] = f"Bearer {jwt}"
    data = raw if raw is not None else (json.dumps(body, indent=2) if body is not None else "")
    return client.generic(method, f"/1.0/{path}", data, content_type="application/json", **headers)


_macs = iter(range(1, 10_000))


def device_for(client: Client, box: Box | None, *, confirmed: bool = True) -> dict[str, Any]:
    """A subscribed device; with ``box``, linked to it as a claim does (until the bind part's claim
    route exists), the box on the otb protocol and running its desired configuration."""
    mac = f"00:0d:b9:00:{next(_macs) >> 8 & 255:02x}:{next(_macs) & 255:02x}"
    response = otb_call(
        client, "POST", "subscribe", {"private_ips": ["192.168.100.1"], "board": "apu2", "macaddr": mac}
    )
    assert response.status_code == 200, response.content
    answer = response.json()
    if box is not None:
        now = timezone.now()
        OtbDevice.objects.filter(id=answer["device_id"]).update(
            box=box, linked_at=now, confirmed_at=now if confirmed else None
        )
        Box.objects.filter(pk=box.pk).update(protocol=BoxProtocol.OTB, applied_config_hash=F("config_hash"))
        box.refresh_from_db()
    return answer


def todo(client: Client, device: dict[str, Any]) -> Any:
    response = otb_call(client, "GET", f"devices/{device['device_id']}/actions/todo", jwt=device["jwt"])
    assert response.status_code == 200, response.content
    return response.json()


def report(
    client: Client, device: dict[str, Any], action_id: str, body: Any = None, raw: str | None = None
) -> Any:
    return otb_call(
        client, "PUT", f"devices/{device['device_id']}/actions/{action_id}", body, jwt=device["jwt"], raw=raw
    )


@pytest.fixture
def otb_box(people: Any, claimed_box_factory: Any) -> Box:
    return claimed_box_factory(people.org)


def test_an_idle_linked_box_is_told_to_wait_and_nothing_is_written(otb_box: Box) -> None:
    client = Client()
    device = device_for(client, otb_box)
    with CaptureQueriesContext(connection) as queries:
        answer = todo(client, device)
    assert answer == {"id": None, "action": "wait", "arguments": {"delay": 10}}
    writes = [q["sql"] for q in queries if q["sql"].split()[0].upper() in ("INSERT", "UPDATE", "DELETE")]
    assert writes == []
    # the device lookup, then the pending command lookup
    assert len([q for q in queries if q["sql"].startswith("SELECT")]) <= 2


def test_a_pending_device_waits() -> None:
    client = Client()
    device = device_for(client, None)
    assert todo(client, device)["action"] == "wait"


def test_a_linked_unconfirmed_box_is_asked_to_confirm_once_per_period(otb_box: Box) -> None:
    client = Client()
    device = device_for(client, otb_box, confirmed=False)
    assert todo(client, device) == {"id": None, "action": "askServiceConfirmation", "arguments": {}}
    # unanswered, it is not repeated on the next polls (rated per device)
    assert todo(client, device)["action"] == "wait"
    assert todo(client, device)["action"] == "wait"


def test_a_config_change_makes_a_configure_action(otb_box: Box) -> None:
    client = Client()
    device = device_for(client, otb_box)
    Box.objects.filter(pk=otb_box.pk).update(applied_config_hash="older")
    assert todo(client, device) == {"id": None, "action": "configure", "arguments": {}}
    assert todo(client, device)["action"] == "wait"  # not every second while the box fetches it


@pytest.mark.parametrize(
    ("kind", "params", "action", "arguments"),
    [
        (CommandKind.REBOOT, {}, "reboot", {}),
        (
            CommandKind.RESTART_SERVICES,
            {"services": ["glorytun", "dnsmasq"]},
            "restartServices",
            {"services": ["glorytun", "dnsmasq"]},
        ),
        (CommandKind.RESTART_SERVICES, {}, "restartServices", {"services": ["glorytun", "shadowsocks"]}),
        (CommandKind.DIAGNOSTICS, {}, "diagnostic", {}),
        (CommandKind.SPEED_TEST, {}, "speedtest", {}),
        (CommandKind.REFRESH_CONFIG, {}, "configure", {}),
        (CommandKind.BACKUP, {}, "backup", {}),
        (CommandKind.REFRESH_PROPERTIES, {}, "refreshProperties", {}),
        # updateReleaseChannel needs feeds configured: tests/otbcompat/test_release_channel.py
    ],
)
def test_each_command_kind_reaches_the_box_as_its_action(
    otb_box: Box, kind: str, params: dict[str, Any], action: str, arguments: dict[str, Any]
) -> None:
    client = Client()
    device = device_for(client, otb_box)
    command = command_create(actor=SYSTEM, box=otb_box, kind=kind, params=params)
    answer = todo(client, device)
    assert answer == {"id": str(command.id), "action": action, "arguments": arguments}
    command.refresh_from_db()
    assert command.state == CommandState.SENT and command.delivery_count == 1
    # handed out once: a reboot reports only after rebooting, it must not be given again meanwhile
    assert todo(client, device)["action"] == "wait"


def test_every_kind_has_an_action() -> None:
    assert set(ACTIONS) == set(CommandKind.values)


def test_commands_come_oldest_first_after_the_derived_actions(otb_box: Box) -> None:
    client = Client()
    device = device_for(client, otb_box, confirmed=False)
    first = command_create(actor=SYSTEM, box=otb_box, kind=CommandKind.REBOOT)
    second = command_create(actor=SYSTEM, box=otb_box, kind=CommandKind.SPEED_TEST)
    assert todo(client, device)["action"] == "askServiceConfirmation"
    assert todo(client, device)["id"] == str(first.id)
    assert todo(client, device)["id"] == str(second.id)
    assert todo(client, device)["action"] == "wait"


def test_the_result_lands_and_a_second_one_is_kept_without_changing_the_state(otb_box: Box) -> None:
    client = Client()
    device = device_for(client, otb_box)
    command = command_create(actor=SYSTEM, box=otb_box, kind=CommandKind.SPEED_TEST)
    action_id = todo(client, device)["id"]
    response = report(client, device, action_id, {"status": "error", "details": "curl: (28) timeout\n"})
    assert response.status_code == 200, response.content
    command.refresh_from_db()
    assert command.state == CommandState.FAILED
    assert command.error == "curl: (28) timeout\n"
    assert command.result is not None and command.result["status"] == "error"
    # the box reports the same action again (a failed sysupgrade is reported done after its restart)
    response = report(client, device, action_id, {"status": "done"})
    assert response.status_code == 200
    command.refresh_from_db()
    assert command.state == CommandState.FAILED
    assert command.result is not None
    assert [late["status"] for late in command.result["late_reports"]] == ["done"]
    assert Event.objects.filter(box=otb_box, kind="command_finished").count() == 1


def test_done_succeeds_with_bounded_details(otb_box: Box) -> None:
    client = Client()
    device = device_for(client, otb_box)
    command = command_create(actor=SYSTEM, box=otb_box, kind=CommandKind.DIAGNOSTICS)
    todo(client, device)
    details = "x" * 50_000
    assert report(client, device, str(command.id), {"status": "done", "details": details}).status_code == 200
    command.refresh_from_db()
    assert command.state == CommandState.SUCCEEDED
    assert command.result is not None
    assert 32 * 1024 <= len(command.result["details"]) < 33 * 1024
    assert "characters cut" in command.result["details"]


def test_an_expired_command_is_not_delivered(otb_box: Box) -> None:
    client = Client()
    device = device_for(client, otb_box)
    command = command_create(actor=SYSTEM, box=otb_box, kind=CommandKind.REBOOT)
    Command.objects.filter(pk=command.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    assert todo(client, device)["action"] == "wait"
    command.refresh_from_db()
    assert command.state == CommandState.PENDING and command.delivery_count == 0


def test_another_boxs_action_is_refused_and_untouched(people: Any, claimed_box_factory: Any) -> None:
    client = Client()
    mine, theirs = claimed_box_factory(people.org), claimed_box_factory(people.org)
    device = device_for(client, mine)
    other = device_for(client, theirs)
    command = command_create(actor=SYSTEM, box=theirs, kind=CommandKind.REBOOT)
    assert todo(client, other)["id"] == str(command.id)
    response = report(client, device, str(command.id), {"status": "done"})
    assert response.status_code == 404 and response.json()["class"] == "Client::NotFound"
    # nor through the other device's path with my JWT
    response = otb_call(
        client,
        "PUT",
        f"devices/{other['device_id']}/actions/{command.id}",
        {"status": "done"},
        jwt=device["jwt"],
    )
    assert response.status_code == 403 and response.json()["class"] == "Client::Forbidden"
    command.refresh_from_db()
    assert command.state == CommandState.SENT and command.result is None


@pytest.mark.parametrize(
    ("body", "raw", "field"),
    [
        (None, "{not json", "JSON"),
        ({"details": "x"}, None, "status"),
        ({"status": "ok"}, None, "status"),
        ({"status": "done", "details": ["x"]}, None, "details"),
        ([1], None, "status"),
    ],
)
def test_bad_results_are_400_naming_the_field_and_write_nothing(
    otb_box: Box, body: Any, raw: str | None, field: str
) -> None:
    client = Client()
    device = device_for(client, otb_box)
    command = command_create(actor=SYSTEM, box=otb_box, kind=CommandKind.REBOOT)
    todo(client, device)
    response = report(client, device, str(command.id), body, raw=raw)
    assert response.status_code == 400
    assert response.json()["class"] == "Client::BadRequest" and field in response.json()["message"]
    command.refresh_from_db()
    assert command.state == CommandState.SENT


def test_unknown_action_ids_are_404(otb_box: Box) -> None:
    client = Client()
    device = device_for(client, otb_box)
    for action_id in ("not-a-uuid", "00000000-0000-0000-0000-000000000000"):
        assert report(client, device, action_id, {"status": "done"}).status_code == 404
    unlinked = device_for(client, None)
    assert (
        report(client, unlinked, "00000000-0000-0000-0000-000000000000", {"status": "done"}).status_code
        == 404
    )


def test_the_result_route_needs_put_and_a_jwt(otb_box: Box) -> None:
    client = Client()
    device = device_for(client, otb_box)
    path = f"devices/{device['device_id']}/actions/00000000-0000-0000-0000-000000000000"
    assert otb_call(client, "POST", path, {"status": "done"}, jwt=device["jwt"]).status_code == 405
    response = otb_call(client, "PUT", path, {"status": "done"})
    assert response.status_code == 401 and response.json()["class"] == "Client::Unauthorized"


def test_otb_only_kinds_and_service_lists_are_checked(people: Any, claimed_box_factory: Any) -> None:
    from fleet.core.errors import InvalidInput

    agent_box = claimed_box_factory(people.org)
    with pytest.raises(InvalidInput) as refused:
        command_create(actor=SYSTEM, box=agent_box, kind=CommandKind.REFRESH_PROPERTIES)
    assert refused.value.field == "kind"
    with pytest.raises(InvalidInput) as refused:
        command_create(
            actor=SYSTEM, box=agent_box, kind=CommandKind.RESTART_SERVICES, params={"services": ["a"]}
        )
    assert refused.value.field == "params.services"
    Box.objects.filter(pk=agent_box.pk).update(protocol=BoxProtocol.OTB)
    agent_box.refresh_from_db()
    for services in ([], ["rm -rf /"], ["a;b"], "glorytun", [1]):
        with pytest.raises(InvalidInput) as refused:
            command_create(
                actor=SYSTEM, box=agent_box, kind=CommandKind.RESTART_SERVICES, params={"services": services}
            )
        assert refused.value.field == "params.services"
    assert Command.objects.filter(box=agent_box).count() == 0


def test_polls_make_the_box_present_through_one_batched_flush(otb_box: Box) -> None:
    client = Client()
    device = device_for(client, otb_box)
    BoxStatus.objects.update_or_create(box=otb_box, defaults={"online": False})
    presence_flush()  # whatever earlier tests left
    before = time.time()
    todo(client, device)
    todo(client, device)
    assert not BoxStatus.objects.get(box=otb_box).online  # nothing written by the polls themselves
    assert presence_flush() >= 1
    status = BoxStatus.objects.get(box=otb_box)
    assert status.online and status.offline_since is None
    assert status.last_seen_at is not None and status.last_seen_at.timestamp() >= before - 1
    assert status.firmware_version == "1.1.3"
    assert OtbDevice.objects.get(id=device["device_id"]).last_seen_at == status.last_seen_at
    assert Event.objects.filter(box=otb_box, kind="box_online").count() == 1
    # seen again while online: no second online event
    todo(client, device)
    presence_flush()
    assert Event.objects.filter(box=otb_box, kind="box_online").count() == 1
    assert presence_flush() == 0
