"""Why a rollout waits and until when (``selectors.rollout_waiting``), as the engine decides it: the
start time, the soak time, the boxes' maintenance windows, the in-flight limit, offline and
postponed boxes."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from fleet.firmware.choices import RolloutState, UpgradeState
from fleet.firmware.engine import rollouts_tick
from fleet.firmware.models import Rollout
from fleet.firmware.selectors import rollout_waiting
from fleet.firmware.services import rollout_create, rollout_pause, rollout_start
from fleet.telemetry.models import BoxStatus
from tests.fleet.firmware.firmware_helpers import ACTOR, make_fleet, make_release

pytestmark = pytest.mark.django_db
UTC = dt.UTC
# Wednesday 2026-01-14 12:00 UTC: 13:00 in Paris, outside the default nightly window (02:00-05:00)
NOON = dt.datetime(2026, 1, 14, 12, 0, tzinfo=UTC)
# Thursday 02:00 in Paris
NEXT_WINDOW = dt.datetime(2026, 1, 15, 1, 0, tzinfo=UTC)


def started(**options: Any) -> Rollout:
    options.setdefault("phases", [50, 100])
    rollout = rollout_create(actor=ACTOR, release=make_release(), name="waiting", **options)
    return rollout_start(actor=ACTOR, rollout=rollout)


def kinds(rollout: Rollout, now: dt.datetime) -> dict[str, dict[str, Any]]:
    rollout.refresh_from_db()
    return {item["kind"]: item for item in rollout_waiting(rollout=rollout, now=now)}


def test_boxes_outside_their_window_wait_until_it_opens() -> None:
    # given four online boxes in Paris and a rollout that respects windows, ticked at 13:00 Paris
    make_fleet(4)
    rollout = started(force=False)
    rollouts_tick(now=NOON)

    # then the rollout says its open phase's boxes wait for the window, until Thursday 02:00 Paris
    reasons = kinds(rollout, NOON)
    assert reasons["window"]["boxes"] == 2 and reasons["window"]["until"] == NEXT_WINDOW
    assert "maintenance window" in reasons["window"]["text"]
    assert not rollout.upgrades.filter(state=UpgradeState.SENT).exists()

    # and a forced rollout says nothing of windows: it sends at once
    make_fleet(2, version="1.0.0")
    forced = rollout_create(
        actor=ACTOR, release=make_release("3.0.0"), name="forced", phases=[100], force=True
    )
    forced = rollout_start(actor=ACTOR, rollout=forced)
    rollouts_tick(now=NOON)
    assert "window" not in kinds(forced, NOON)
    assert forced.upgrades.filter(state=UpgradeState.SENT).exists()


def test_the_in_flight_limit_and_offline_boxes() -> None:
    # given three boxes, one of them offline, and one upgrade at a time
    boxes = make_fleet(3)
    BoxStatus.objects.filter(box=boxes[0]).update(online=False)
    rollout = started(phases=[100], force=True, max_in_flight=1)
    rollouts_tick(now=NOON)

    reasons = kinds(rollout, NOON)
    assert reasons["in_flight"]["boxes"] == 1 and "(1 at once)" in reasons["in_flight"]["text"]
    # the last phase is open: the offline box is waited for until the offline grace ends
    assert reasons["offline"]["boxes"] == 1 and rollout.phase_opened_at is not None
    assert reasons["offline"]["until"] == rollout.phase_opened_at + dt.timedelta(
        seconds=rollout.offline_grace_s
    )


def test_the_soak_time_before_the_next_phase() -> None:
    # given phase 1 settled ten minutes ago and a soak time of one hour
    make_fleet(2)
    rollout = started(force=True, soak_s=3600)
    rollouts_tick(now=NOON)
    Rollout.objects.filter(pk=rollout.pk).update(phase_settled_at=NOON - dt.timedelta(minutes=10))

    # then the next phase opens 50 minutes from now, and the page says so
    reasons = kinds(rollout, NOON)
    assert reasons["soak"]["until"] == NOON + dt.timedelta(minutes=50)
    assert "phase 2 (100 %) opens after the soak time of 1 h" in reasons["soak"]["text"]
    # and once the soak is over, that reason is gone
    assert "soak" not in kinds(rollout, NOON + dt.timedelta(hours=1))


def test_draft_scheduled_and_paused_rollouts_say_so() -> None:
    make_fleet(1)
    draft = rollout_create(actor=ACTOR, release=make_release(), name="draft", phases=[100])
    assert list(kinds(draft, NOON)) == ["draft"]

    later = dt.datetime.now(tz=UTC) + dt.timedelta(days=1)
    scheduled = rollout_create(
        actor=ACTOR, release=make_release("4.0.0"), name="s", phases=[100], start_at=later
    )
    scheduled = rollout_start(actor=ACTOR, rollout=scheduled)
    assert scheduled.state == RolloutState.SCHEDULED
    assert kinds(scheduled, dt.datetime.now(tz=UTC))["start"]["until"] == later

    paused = rollout_pause(actor=ACTOR, rollout=scheduled, reason="checking the first boxes")
    assert "checking the first boxes" in kinds(paused, NOON)["paused"]["text"]
