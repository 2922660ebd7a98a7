"""Command services: creation rules, the delivery/report lifecycle, transitions, expiry, doorbell."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from channels.layers import DEFAULT_CHANNEL_LAYER, channel_layers
from django.utils import timezone
from otb_protocol import validate_message

from fleet.commands.choices import CommandState
from fleet.commands.models import Command
from fleet.commands.services import (
    TRANSITIONS,
    command_cancel,
    command_complete,
    command_create,
    command_progress,
    command_transition,
    commands_expire,
    commands_pending_for_box,
)
from fleet.core.audit import Actor
from fleet.core.doorbells import agent_group
from fleet.core.errors import Conflict, Forbidden, InvalidInput, NotFound
from fleet.core.models import AuditLog, Event

pytestmark = pytest.mark.django_db


@pytest.fixture
def box(people: Any, box_factory: Any) -> Any:
    return box_factory(organization=people.org)


def admin_actor(people: Any) -> Actor:
    return Actor.for_user(people.admin)


def test_create_queues_a_pending_command_with_default_ttl_and_audit(people: Any, box: Any) -> None:
    # given an admin of the box's organisation
    # when they queue a speed test
    command = command_create(
        actor=admin_actor(people), box=box, kind="speed_test", params={"bytes": 5_000_000}
    )
    # then it is pending for an hour, with defaults filled in, and audited
    assert command.state == CommandState.PENDING
    assert command.organization_id == people.org.pk
    assert command.params == {"bytes": 5_000_000, "direction": "download"}
    assert abs((command.expires_at - command.created_at).total_seconds() - 3600) < 5
    assert command.created_by == people.admin
    assert AuditLog.objects.filter(action="command.create", target_id=str(command.pk)).count() == 1


@pytest.mark.parametrize(
    ("kind", "params", "ttl_s", "field"),
    [
        ("speed_test", {"bytes": 100_000_001}, None, "params.bytes"),
        ("speed_test", {"bytes": "big"}, None, "params.bytes"),
        ("speed_test", {"direction": "sideways"}, None, "params.direction"),
        ("speed_test", {"iface": "a-name-of-16byte"}, None, "params.iface"),
        ("speed_test", {"iface": "wan/1"}, None, "params.iface"),
        ("speed_test", {"iface": ""}, None, "params.iface"),
        ("speed_test", {"iface": 7}, None, "params.iface"),
        ("diagnostics", {"checks": ["rm -rf"]}, None, "params.checks"),
        ("reboot", {"force": True}, None, "params.force"),
        ("reboot", [], None, "params"),
        ("reboot", {}, 86_401, "ttl_s"),
        ("reboot", {}, 0, "ttl_s"),
        ("format_disk", {}, None, "kind"),
        ("firmware_upgrade", {}, None, "kind"),
    ],
)
def test_create_rejects_bad_input_naming_the_field(
    people: Any, box: Any, kind: str, params: Any, ttl_s: Any, field: str
) -> None:
    # given a bad kind, parameter or TTL
    # when an admin tries to queue it
    with pytest.raises(InvalidInput) as raised:
        command_create(actor=admin_actor(people), box=box, kind=kind, params=params, ttl_s=ttl_s)
    # then the error names the field and nothing is written
    assert raised.value.field == field
    assert not Command.objects.exists()


def test_firmware_upgrade_is_only_created_internally(people: Any, box: Any) -> None:
    # given the rollout engine (internal caller)
    # when it queues a firmware upgrade
    command = command_create(
        actor=Actor.system("rollout"),
        box=box,
        kind="firmware_upgrade",
        params={"version": "2.0"},
        internal=True,
    )
    # then it exists
    assert command.kind == "firmware_upgrade"


def test_viewer_cannot_create_and_outsider_sees_not_found(people: Any, box: Any) -> None:
    with pytest.raises(Forbidden):
        command_create(actor=Actor.for_user(people.viewer), box=box, kind="reboot")
    with pytest.raises(NotFound):
        command_create(actor=Actor.for_user(people.outsider), box=box, kind="reboot")
    command = command_create(actor=Actor.for_user(people.staff), box=box, kind="reboot")
    assert command.state == CommandState.PENDING


def test_unclaimed_box_gets_no_commands(people: Any, box_factory: Any) -> None:
    unclaimed = box_factory()
    with pytest.raises(Conflict) as raised:
        command_create(actor=Actor.for_user(people.staff), box=unclaimed, kind="reboot")
    assert raised.value.field == "box"


def test_full_lifecycle_with_redelivery_and_duplicate_result(people: Any, box: Any) -> None:
    # given a queued diagnostics command
    command = command_create(actor=admin_actor(people), box=box, kind="diagnostics")
    # when the box says hello, then reconnects and says hello again
    first = commands_pending_for_box(box_id=box.pk)
    second = commands_pending_for_box(box_id=box.pk)
    # then the same valid protocol frame is delivered both times, counted
    assert [frame["id"] for frame in first] == [str(command.pk)] == [frame["id"] for frame in second]
    validate_message(first[0])
    assert first[0]["params"]["checks"][0] == "interfaces"
    command.refresh_from_db()
    assert command.state == CommandState.SENT
    assert command.delivery_count == 2
    # when the agent reports progress then a result
    command_progress(box_id=box.pk, command_id=command.pk, progress=40, message="pinging")
    command.refresh_from_db()
    assert (command.state, command.progress, command.progress_message) == ("running", 40, "pinging")
    assert commands_pending_for_box(box_id=box.pk) == []
    done = command_complete(box_id=box.pk, command_id=command.pk, ok=True, output={"ping": "ok"}, error=None)
    # then it succeeded with its output, and the timeline has a command_finished event
    assert done is not None and done.state == CommandState.SUCCEEDED
    command.refresh_from_db()
    assert command.result == {"ping": "ok"}
    assert command.progress == 100 and command.finished_at is not None
    event = Event.objects.get(box=box, kind="command_finished")
    assert event.data["command_id"] == str(command.pk) and event.data["state"] == "succeeded"
    # when the same result arrives again after a reconnect (with a different body even)
    again = command_complete(box_id=box.pk, command_id=command.pk, ok=False, output={"x": 1}, error="late")
    late_progress = command_progress(box_id=box.pk, command_id=command.pk, progress=10, message="late")
    # then it is ignored
    assert again is None and late_progress is None
    command.refresh_from_db()
    assert command.state == CommandState.SUCCEEDED and command.result == {"ping": "ok"}
    assert Event.objects.filter(kind="command_finished").count() == 1


def test_failed_result_is_stored(people: Any, box: Any) -> None:
    command = command_create(actor=admin_actor(people), box=box, kind="restart_services")
    commands_pending_for_box(box_id=box.pk)
    command_complete(box_id=box.pk, command_id=command.pk, ok=False, output={}, error="mptcpd did not start")
    command.refresh_from_db()
    assert command.state == CommandState.FAILED
    assert command.error == "mptcpd did not start"


def test_progress_and_results_with_nul_characters_are_stored_without_them(people: Any, box: Any) -> None:
    # given a command the box is running (found by the protocol fuzz, #14: a NUL in the progress message,
    # the error or the output failed the save, and the agent was told "unavailable" for ever)
    command = command_create(actor=admin_actor(people), box=box, kind="diagnostics")
    commands_pending_for_box(box_id=box.pk)
    # when the agent reports progress and a result with NUL characters in their text
    command_progress(box_id=box.pk, command_id=command.pk, progress=5, message="step\x001")
    command_complete(
        box_id=box.pk,
        command_id=command.pk,
        ok=False,
        output={"dns\x00": {"output": ["a\x00b", 1]}},
        error="failed\x00!",
    )
    # then both are stored, the NUL characters dropped
    command.refresh_from_db()
    assert command.progress_message == "step1"
    assert command.result == {"dns": {"output": ["ab", 1]}}
    assert command.error == "failed!"


def test_reports_for_another_boxs_command_are_not_found(people: Any, box: Any, box_factory: Any) -> None:
    other = box_factory(organization=people.org)
    command = command_create(actor=admin_actor(people), box=box, kind="reboot")
    with pytest.raises(NotFound):
        command_complete(box_id=other.pk, command_id=command.pk, ok=True, output={}, error=None)
    with pytest.raises(NotFound):
        command_progress(box_id=other.pk, command_id=command.pk, progress=1, message="")


@pytest.mark.parametrize(
    ("current", "target", "allowed"),
    [
        ("pending", "sent", True),
        ("sent", "sent", True),
        ("sent", "running", True),
        ("running", "succeeded", True),
        ("running", "cancelled", False),
        ("running", "sent", False),
        ("succeeded", "running", False),
        ("failed", "succeeded", False),
        ("expired", "sent", False),
        ("cancelled", "running", False),
    ],
)
def test_transition_table(current: str, target: str, allowed: bool) -> None:
    # given a command in ``current``
    command = Command(state=current, delivery_count=0)
    # when it is moved to ``target``
    if allowed:
        changed = command_transition(command=command, target=target)
        # then the move is made and stamped
        assert command.state == target and "state" in changed
    else:
        with pytest.raises(Conflict):
            command_transition(command=command, target=target)
        assert command.state == current
    # and the finished states are final
    assert all(not TRANSITIONS[state] for state in ("succeeded", "failed", "expired", "cancelled"))


def test_cancel_pending_but_not_running(people: Any, box: Any) -> None:
    pending = command_create(actor=admin_actor(people), box=box, kind="reboot")
    cancelled = command_cancel(actor=admin_actor(people), command=pending)
    assert cancelled.state == CommandState.CANCELLED
    assert commands_pending_for_box(box_id=box.pk) == []
    running = command_create(actor=admin_actor(people), box=box, kind="reboot")
    commands_pending_for_box(box_id=box.pk)
    command_progress(box_id=box.pk, command_id=running.pk, progress=1, message="")
    with pytest.raises(Conflict):
        command_cancel(actor=admin_actor(people), command=running)
    with pytest.raises(Forbidden):
        command_cancel(actor=Actor.for_user(people.viewer), command=running)


def test_ttl_expiry(people: Any, box: Any) -> None:
    # given a short-lived command and a long-lived one, one of them delivered
    short = command_create(actor=admin_actor(people), box=box, kind="reboot", ttl_s=60)
    long = command_create(actor=admin_actor(people), box=box, kind="refresh_config", ttl_s=7200)
    # when time passes beyond the short TTL
    expired = commands_expire(now=timezone.now() + timedelta(minutes=2))
    # then only the short one expired, and a late result for it is ignored
    assert expired == 1
    short.refresh_from_db()
    long.refresh_from_db()
    assert short.state == CommandState.EXPIRED and short.finished_at is not None
    assert long.state == CommandState.PENDING
    assert command_complete(box_id=box.pk, command_id=short.pk, ok=True, output={}, error=None) is None
    assert commands_expire(now=timezone.now() + timedelta(minutes=2)) == 0


def test_unexpired_only_are_delivered(people: Any, box: Any) -> None:
    command = command_create(actor=admin_actor(people), box=box, kind="reboot", ttl_s=60)
    Command.objects.filter(pk=command.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    assert commands_pending_for_box(box_id=box.pk) == []


@pytest.mark.django_db(transaction=True)
def test_create_rings_the_box_session_after_commit(people: Any, box: Any) -> None:
    # given a channel listening in the box's agent group (what the live session joins)
    # A layer of the test's own: the shared one keeps per-loop receive locks from earlier tests'
    # event loops, and async_to_sync runs each call on a new loop.
    layer = channel_layers.make_backend(DEFAULT_CHANNEL_LAYER)
    channel = async_to_sync(layer.new_channel)()
    async_to_sync(layer.group_add)(agent_group(box.pk), channel)
    try:
        # when a command is created (and committed)
        command_create(actor=admin_actor(people), box=box, kind="reboot")
        # then the doorbell rings
        message = async_to_sync(layer.receive)(channel)
        assert message["type"] == "command.doorbell"
    finally:
        async_to_sync(layer.group_discard)(agent_group(box.pk), channel)


def test_a_person_cannot_queue_more_than_the_open_commands_limit(
    people: Any, box: Any, settings: Any
) -> None:
    # given at most 3 waiting commands per box
    settings.OTB = {**settings.OTB, "MAX_OPEN_COMMANDS_PER_BOX": 3}
    for _ in range(3):
        command_create(actor=admin_actor(people), box=box, kind="reboot")
    # when a 4th is queued, then it is refused naming the reason, and nothing is written
    with pytest.raises(Conflict) as refused:
        command_create(actor=admin_actor(people), box=box, kind="reboot")
    assert refused.value.code == "too_many_commands"
    assert Command.objects.filter(box=box).count() == 3
    # finished or expired commands do not count
    oldest = Command.objects.filter(box=box).order_by("created_at").first()
    assert oldest is not None
    Command.objects.filter(pk=oldest.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    command_create(actor=admin_actor(people), box=box, kind="reboot")
    # and the system's own commands (the rollout engine's) are not limited
    command_create(actor=Actor.system("rollouts"), box=box, kind="reboot", internal=True)
    assert Command.objects.filter(box=box).count() == 5
