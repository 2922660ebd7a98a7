"""Presence: the sweep marks silent boxes offline within one tick."""

from __future__ import annotations

from datetime import timedelta
from typing import Any, cast

import pytest
from django.conf import settings
from django.utils import timezone

from fleet.telemetry.models import BoxStatus
from fleet.telemetry.services import presence_sweep
from fleet.telemetry.tasks import presence_sweep_task

pytestmark = pytest.mark.django_db


def test_presence_sweep_marks_only_silent_boxes_offline(box_factory: Any, people: Any) -> None:
    now = timezone.now()
    silent_for = timedelta(seconds=3 * cast(int, settings.OTB["HEARTBEAT_INTERVAL_S"]) + 1)
    silent = BoxStatus.objects.create(
        box=box_factory(organization=people.org), online=True, last_seen_at=now - silent_for
    )
    alive = BoxStatus.objects.create(box=box_factory(organization=people.org), online=True, last_seen_at=now)
    # when the sweep runs
    swept = presence_sweep(now=now)
    # then only the silent box went offline
    assert swept == 1
    silent.refresh_from_db()
    alive.refresh_from_db()
    assert (silent.online, silent.offline_since) == (False, now)
    assert alive.online is True
    # and a second sweep finds nothing
    assert presence_sweep(now=now) == 0


def test_presence_sweep_task_runs_the_service(box_factory: Any) -> None:
    old = timezone.now() - timedelta(hours=1)
    status = BoxStatus.objects.create(box=box_factory(), online=True, last_seen_at=old)
    assert presence_sweep_task() == 1
    status.refresh_from_db()
    assert status.online is False
