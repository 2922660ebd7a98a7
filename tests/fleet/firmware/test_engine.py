"""The rollout engine over simulated boxes, in-process against the real database: phases, the failure
policy, offline boxes, health checks after the reboot, the in-flight limit and timeouts."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from django.utils import timezone

from fleet.commands.models import Command
from fleet.core.models import AuditLog
from fleet.firmware.choices import RolloutState, UpgradeState
from fleet.firmware.engine import rollouts_tick
from fleet.firmware.models import Rollout, Upgrade
from fleet.firmware.services import rollout_create, rollout_start
from tests.fleet.firmware.firmware_helpers import ACTOR, Responder, make_fleet, make_release, set_online

pytestmark = pytest.mark.django_db


def run_until_settled(
    rollout: Rollout, responder: Responder, *, max_ticks: int = 40, now: Any = None
) -> Rollout:
    for _ in range(max_ticks):
        rollouts_tick(now=now)
        responder.respond()
        rollouts_tick(now=now)
        rollout.refresh_from_db()
        if rollout.state in (RolloutState.PAUSED, RolloutState.COMPLETED, RolloutState.ABORTED):
            break
    return rollout


def states(rollout: Rollout) -> dict[str, int]:
    counts: dict[str, int] = {}
    for state in rollout.upgrades.values_list("state", flat=True):
        counts[state] = counts.get(state, 0) + 1
    return counts


def start(release: Any, **options: Any) -> Rollout:
    options.setdefault("phases", [10, 50, 100])
    options.setdefault("soak_s", 0)
    options.setdefault("max_in_flight", 1000)
    options.setdefault("force", True)
    rollout = rollout_create(actor=ACTOR, release=release, name="test rollout", **options)
    return rollout_start(actor=ACTOR, rollout=rollout)


def test_failures_above_threshold_pause_the_rollout_in_its_first_phase() -> None:
    # given 1,000 online boxes, 5 % of upgrades failing and a 2 % failure threshold
    make_fleet(1000)
    rollout = start(make_release(), max_failure_pct=2.0)
    responder = Responder(fail_fraction=0.05)

    # when the engine and the boxes run
    rollout = run_until_settled(rollout, responder)

    # then the rollout paused itself in phase 1 and says why
    assert rollout.state == RolloutState.PAUSED
    assert rollout.current_phase == 0
    assert "phase 1" in rollout.pause_reason and "2 % limit" in rollout.pause_reason
    # and the upgrades already in flight are still followed to their end while it is paused
    for _ in range(3):
        responder.respond()
        rollouts_tick()
    rollout.refresh_from_db()
    assert rollout.state == RolloutState.PAUSED
    counts = states(rollout)
    assert counts[UpgradeState.FAILED] == 5
    assert counts[UpgradeState.SUCCEEDED] == 95
    # nothing of the later phases was sent
    assert not rollout.upgrades.filter(phase__gt=0).exclude(state=UpgradeState.PENDING).exists()
    assert Command.objects.filter(kind="firmware_upgrade").count() == 100
    assert AuditLog.objects.filter(action="rollout.auto_pause", target_id=str(rollout.pk)).exists()
    failed = rollout.upgrades.filter(state=UpgradeState.FAILED).first()
    assert failed is not None and failed.reason == "apply_failed: simulated failure"
    assert failed.failed_at is not None and failed.sent_at is not None


def test_without_failures_every_phase_completes() -> None:
    # given 1,000 online boxes and no failures
    boxes = make_fleet(1000)
    rollout = start(make_release())
    responder = Responder()

    # when
    rollout = run_until_settled(rollout, responder)

    # then every phase opened in turn and every box succeeded
    assert rollout.state == RolloutState.COMPLETED
    assert rollout.current_phase == 2
    assert rollout.phase_sizes == [100, 400, 500]
    assert states(rollout) == {UpgradeState.SUCCEEDED: 1000}
    assert AuditLog.objects.filter(action="rollout.phase_open", target_id=str(rollout.pk)).count() == 3
    boxes[0].refresh_from_db()
    assert boxes[0].firmware_version == "2.0.0"
    upgrade = rollout.upgrades.first()
    assert upgrade is not None
    for stamp in ("pending_at", "scheduled_at", "sent_at", "succeeded_at"):
        assert getattr(upgrade, stamp) is not None, stamp


def test_offline_boxes_are_upgraded_after_they_reconnect() -> None:
    # given 100 boxes, 10 of them offline when the rollout runs
    boxes = make_fleet(100)
    offline = [box.pk for box in boxes[:10]]
    set_online(offline, online=False)
    rollout = start(make_release(), phases=[50, 100])
    responder = Responder()

    # when the rollout has done what it can
    for _ in range(6):
        rollouts_tick()
        responder.respond()
    rollout.refresh_from_db()

    # then the online boxes are upgraded, the offline ones wait, the rollout stays active
    assert rollout.state == RolloutState.RUNNING
    assert rollout.current_phase == 1
    assert states(rollout) == {UpgradeState.SUCCEEDED: 90, UpgradeState.PENDING: 10}
    assert set(rollout.upgrades.filter(state=UpgradeState.PENDING).values_list("box_id", flat=True)) == set(
        offline
    )

    # when they come back
    set_online(offline, online=True)
    rollout = run_until_settled(rollout, responder)

    # then they are upgraded too and the rollout completes
    assert rollout.state == RolloutState.COMPLETED
    assert states(rollout) == {UpgradeState.SUCCEEDED: 100}


def test_a_box_back_on_the_old_version_or_unhealthy_fails() -> None:
    # given four boxes: two come back normally, one on its old version, one with its tunnel down
    boxes = make_fleet(4)
    old, sick = boxes[0].pk, boxes[1].pk
    rollout = start(make_release(), phases=[100], health_window_s=60)
    responder = Responder(come_back_old={old}, come_back_unhealthy={sick})

    # when the boxes answer, send telemetry after their reboot, and the engine runs within the window
    rollouts_tick()
    responder.respond()
    rollouts_tick()
    assert (
        Upgrade.objects.get(rollout=rollout, box=boxes[2]).state == UpgradeState.REBOOTING
    )  # no telemetry yet
    responder.telemetry()
    rollouts_tick()

    # then the old-version box failed at once, the unhealthy one is not succeeded
    by_box = {u.box_id: u for u in Upgrade.objects.filter(rollout=rollout)}
    assert by_box[old].state == UpgradeState.FAILED
    assert "came back on 1.0.0, not 2.0.0" in by_box[old].reason
    assert by_box[sick].state == UpgradeState.REBOOTING
    assert by_box[boxes[2].pk].state == UpgradeState.SUCCEEDED

    # when the health window has passed and it is still unhealthy
    rollouts_tick(now=timezone.now() + dt.timedelta(seconds=61))

    # then it failed with the reason
    sick_upgrade = Upgrade.objects.get(rollout=rollout, box_id=sick)
    assert sick_upgrade.state == UpgradeState.FAILED
    assert "unhealthy" in sick_upgrade.reason and "tunnel down" in sick_upgrade.reason


def test_the_in_flight_limit_holds_and_silent_boxes_time_out() -> None:
    # given 30 boxes that never answer and an in-flight limit of 10
    boxes = make_fleet(30)
    rollout = start(
        make_release(), phases=[100], max_in_flight=10, upgrade_timeout_s=600, max_failure_pct=100.0
    )
    responder = Responder(silent={box.pk for box in boxes})

    # when the engine ticks twice
    rollouts_tick()
    rollouts_tick()
    responder.respond()

    # then only 10 are in flight
    assert rollout.upgrades.filter(state=UpgradeState.SENT).count() == 10
    assert Command.objects.filter(kind="firmware_upgrade").count() == 10

    # when the upgrade timeout passes
    rollouts_tick(now=timezone.now() + dt.timedelta(seconds=601))

    # then those time out with the reason and the next 10 go
    assert rollout.upgrades.filter(state=UpgradeState.TIMED_OUT).count() == 10
    timed_out = rollout.upgrades.filter(state=UpgradeState.TIMED_OUT).first()
    assert timed_out is not None and "stuck in sent" in timed_out.reason
    assert rollout.upgrades.filter(state=UpgradeState.SENT).count() == 10


def test_two_ticks_at_once_never_send_twice() -> None:
    # given a started rollout
    make_fleet(50)
    rollout = start(make_release(), phases=[100])

    # when the tick runs repeatedly
    rollouts_tick()
    rollouts_tick()
    rollouts_tick()

    # then every box got exactly one command
    assert Command.objects.filter(kind="firmware_upgrade").count() == 50
    assert rollout.upgrades.filter(state=UpgradeState.SENT).count() == 50
