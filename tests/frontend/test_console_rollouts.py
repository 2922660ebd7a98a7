"""The console's rollout form and page: pace and failure policy set in the form (errors next to their
fields), why the rollout waits and until when, the progress legend, and the per-box list."""

from __future__ import annotations

import datetime as dt
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from django.test import Client
from django.utils import timezone

from fleet.firmware.engine import rollouts_tick
from fleet.firmware.models import BoxUpgradePolicy, Rollout
from fleet.firmware.services import rollout_create, rollout_start
from fleet.firmware.windows import next_window_start
from tests.fleet.firmware.firmware_helpers import ACTOR, make_fleet, make_release
from tests.fleet.firmware.test_waiting import NOON

pytestmark = pytest.mark.django_db


def staff(people: Any) -> Client:
    client = Client()
    client.force_login(people.staff)
    return client


def form(release: Any, **extra: Any) -> dict[str, Any]:
    return {"name": "2.0.0 for everyone", "release": str(release.pk), "phases": "10, 100", **extra}


def test_the_form_sets_soak_failure_threshold_and_in_flight_limit(people: Any) -> None:
    release = make_release()
    make_fleet(3, organization=people.org)
    client = staff(people)

    # the form offers them with the service's defaults, and says what "force" does
    page = client.get(f"/console/rollouts/new/?release={release.pk}").content.decode()
    assert 'name="soak_minutes"' in page and 'value="60"' in page
    assert 'name="max_failure_pct"' in page and 'name="max_in_flight"' in page and 'value="500"' in page
    assert "ignore maintenance windows" in page
    assert f'<option value="{release.pk}" selected>' in page  # "Roll it out" from the release page

    response = client.post(
        "/console/rollouts/new/",
        form(
            release,
            soak_minutes="15",
            max_failure_pct="0.5",
            max_failures="3",
            max_in_flight="20",
            intent="create",
        ),
    )
    assert response.status_code == 302
    rollout = Rollout.objects.get()
    assert (rollout.soak_s, rollout.max_failure_pct, rollout.max_failures, rollout.max_in_flight) == (
        900,
        0.5,
        3,
        20,
    )
    # and the page says them back
    page = client.get(f"/console/rollouts/{rollout.pk}/").content.decode()
    assert "soak 15 min between phases" in page and "at most 20 in flight" in page


def test_bad_pace_values_are_said_next_to_their_fields(people: Any) -> None:
    release = make_release()
    response = staff(people).post(
        "/console/rollouts/new/",
        form(
            release,
            soak_minutes="-5",
            max_failure_pct="150",
            max_failures="many",
            max_in_flight="0",
            intent="preview",
        ),
        HTTP_HX_REQUEST="true",
    )
    content = response.content.decode()
    assert response.status_code == 400
    for field, words in (
        ("soak_minutes", "cannot be negative"),
        ("max_failure_pct", "percentage from 0 to 100"),
        ("max_failures", "whole number"),
        ("max_in_flight", "At least one upgrade"),
    ):
        assert f'id="id_{field}-errors"' in content, field
        assert words in content, words
    assert not Rollout.objects.exists()


def test_the_page_says_why_it_waits_with_a_legend_and_the_boxes(people: Any) -> None:
    # given a rollout waiting for its boxes' maintenance window (one day a week, not today)
    boxes = make_fleet(4, organization=people.org)
    weekday = (timezone.now().astimezone(ZoneInfo(people.org.timezone)).weekday() + 3) % 7
    BoxUpgradePolicy.objects.bulk_create(
        [
            BoxUpgradePolicy(box=box, window_days=[weekday], window_start=dt.time(2), window_end=dt.time(3))
            for box in boxes
        ]
    )
    rollout = rollout_create(actor=ACTOR, release=make_release(), name="nightly", phases=[50, 100])
    rollout_start(actor=ACTOR, rollout=rollout)
    rollouts_tick(now=NOON)
    client = staff(people)

    # then the page says it waits for the window and until when, in words
    page = client.get(f"/console/rollouts/{rollout.pk}/").content.decode()
    assert 'id="rollout-waiting"' in page and "wait for their maintenance window" in page
    opens = next_window_start(timezone.now(), people.org.timezone, [weekday], dt.time(2), dt.time(3))
    assert opens is not None
    assert f'datetime="{opens.astimezone(timezone.get_current_timezone()).isoformat()}"' in page
    # the progress bar has a legend that names every colour, at 0 % done
    assert 'id="progress-legend"' in page
    for label in ("Succeeded 0 %", "In flight 0 %", "Failed 0 %", "Not sent yet"):
        assert label in page, label
    # and every box is listed with its state; the list filters by state
    for box in boxes:
        assert box.serial in page
    scheduled = client.get(f"/console/rollouts/{rollout.pk}/?state=scheduled").content.decode()
    pending = rollout.upgrades.filter(state="pending").values_list("box__serial", flat=True)
    assert pending and not any(serial in scheduled for serial in pending)
    bad = client.get(f"/console/rollouts/{rollout.pk}/?state=nonsense&page=abc")
    assert bad.status_code == 200 and "There is no upgrade state" in bad.content.decode()
