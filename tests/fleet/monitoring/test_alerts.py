"""Alert evaluation (fleet.monitoring.services.alerts): debounce, one notification per firing,
recovery, the flapping limit, WAN down and loss thresholds, disabled targets and other boxes."""

from __future__ import annotations

import itertools
from datetime import timedelta
from typing import Any

import pytest

from fleet.core.audit import Actor
from fleet.core.models import Event
from fleet.monitoring.models import Alert, NotificationDelivery
from fleet.monitoring.services import alert_rule_create, alert_rule_evaluate
from fleet.telemetry.models import BoxStatus, WanStatus
from tests.fleet.monitoring.conftest import T0, at, offline_rule, set_offline

pytestmark = pytest.mark.django_db


def set_online(box: Any) -> None:
    BoxStatus.objects.update_or_create(box=box, defaults={"online": True, "offline_since": None})


def set_wan(
    box: Any, iface: str = "wan1", *, up: bool = True, loss: float | None = 0.0, rtt: float = 10.0
) -> None:
    WanStatus.objects.update_or_create(
        box=box,
        iface=iface,
        defaults={
            "up": up,
            "loss_pct": loss,
            "rtt_ms": rtt,
            "up_changed_at": T0,
            "updated_at": T0,
        },
    )


def deliveries(event: str | None = None) -> int:
    queryset = NotificationDelivery.objects.all()
    return queryset.filter(event=event).count() if event else queryset.count()


def test_offline_shorter_than_n_minutes_does_not_fire(people: Any, box: Any, email_target: Any) -> None:
    # given a 5-minute box_offline rule and a box offline since T0
    rule = offline_rule(people, [email_target])
    set_offline(box, since=at(0))
    # when evaluated at 3 minutes
    summary = alert_rule_evaluate(rule_id=rule.pk, now=at(3))
    # then the alert is only pending, nothing is sent
    assert summary.fired == 0
    assert Alert.objects.get().state == "pending"
    # when the box comes back before 5 minutes
    set_online(box)
    alert_rule_evaluate(rule_id=rule.pk, now=at(4))
    # then the pending alert is forgotten and nobody was notified
    assert not Alert.objects.exists()
    assert deliveries() == 0


def test_offline_longer_fires_once_then_recovers_once(people: Any, box: Any, email_target: Any) -> None:
    rule = offline_rule(people, [email_target])
    set_offline(box, since=at(0))
    alert_rule_evaluate(rule_id=rule.pk, now=at(2))
    # when the condition has held 5 minutes and is evaluated several times
    first = alert_rule_evaluate(rule_id=rule.pk, now=at(5))
    alert_rule_evaluate(rule_id=rule.pk, now=at(6))
    alert_rule_evaluate(rule_id=rule.pk, now=at(9))
    # then exactly one firing notification exists, and a timeline event
    assert first.fired == 1
    alert = Alert.objects.get()
    assert alert.state == "firing" and alert.started_at == at(0) and alert.fired_at == at(5)
    assert deliveries("firing") == 1
    assert Event.objects.filter(kind="alert_firing", box=box).count() == 1
    # when the box comes back online (more than 5 minutes after the firing notice)
    set_online(box)
    recovered = alert_rule_evaluate(rule_id=rule.pk, now=at(12))
    alert_rule_evaluate(rule_id=rule.pk, now=at(13))
    # then one recovery notification
    assert recovered.resolved == 1
    alert.refresh_from_db()
    assert alert.state == "resolved" and alert.resolved_at == at(12)
    assert deliveries("resolved") == 1
    assert Event.objects.filter(kind="alert_resolved", box=box).count() == 1


def test_alert_already_long_offline_fires_at_first_evaluation(
    people: Any, box: Any, email_target: Any
) -> None:
    rule = offline_rule(people, [email_target], minutes=10)
    set_offline(box, since=at(0))
    assert alert_rule_evaluate(rule_id=rule.pk, now=at(30)).fired == 1


def test_flapping_is_limited_to_one_notification_per_five_minutes(
    people: Any, box: Any, email_target: Any
) -> None:
    # given a 1-minute rule on a box that flaps offline/online every minute
    rule = offline_rule(people, [email_target], minutes=1)
    minute = 0.0
    for _ in range(15):
        set_offline(box, since=at(minute))
        alert_rule_evaluate(rule_id=rule.pk, now=at(minute + 0.5))
        alert_rule_evaluate(rule_id=rule.pk, now=at(minute + 1.2))
        set_online(box)
        alert_rule_evaluate(rule_id=rule.pk, now=at(minute + 1.7))
        minute += 2
    # then over 30 minutes of flapping the notifications are at least 5 minutes apart
    sent_times = sorted(
        t
        for field in ("fired_at", "resolved_at")
        for t in Alert.objects.values_list(field, flat=True)
        if t is not None
    )
    assert 2 <= len(sent_times) <= 7
    assert all(b - a >= timedelta(minutes=5) for a, b in itertools.pairwise(sent_times))
    assert deliveries() == len(sent_times)


def test_wan_down_per_interface_and_only_for_online_boxes(people: Any, box: Any, email_target: Any) -> None:
    rule = alert_rule_create(
        actor=Actor.for_user(people.admin),
        organization=people.org,
        name="WAN down",
        kind="wan_down",
        duration_minutes=5,
        target_ids=[email_target.pk],
    )
    set_online(box)
    set_wan(box, "wan1", up=False)
    set_wan(box, "wan2", up=True)
    summary = alert_rule_evaluate(rule_id=rule.pk, now=at(10))
    assert summary.fired == 1
    assert Alert.objects.get().iface == "wan1"
    # an offline box's WAN rows are stale: its open WAN alerts resolve (box_offline covers it)
    BoxStatus.objects.filter(box=box).update(online=False, offline_since=at(11))
    assert alert_rule_evaluate(rule_id=rule.pk, now=at(16)).resolved == 1


def test_loss_threshold_tracks_its_own_start_and_a_blip_resets_it(
    people: Any, box: Any, email_target: Any
) -> None:
    # given a rule "loss above 5 % for 3 minutes"
    rule = alert_rule_create(
        actor=Actor.for_user(people.admin),
        organization=people.org,
        name="Lossy",
        kind="loss_above",
        threshold=5.0,
        duration_minutes=3,
        target_ids=[email_target.pk],
    )
    set_online(box)
    set_wan(box, loss=12.0)
    alert_rule_evaluate(rule_id=rule.pk, now=at(0))
    alert_rule_evaluate(rule_id=rule.pk, now=at(2))
    # when loss dips below the threshold briefly at 2.5 minutes
    set_wan(box, loss=1.0)
    alert_rule_evaluate(rule_id=rule.pk, now=at(2.5))
    set_wan(box, loss=12.0)
    alert_rule_evaluate(rule_id=rule.pk, now=at(3))
    # then the clock restarted: not firing at 4 minutes, firing at 6
    assert alert_rule_evaluate(rule_id=rule.pk, now=at(4)).fired == 0
    assert alert_rule_evaluate(rule_id=rule.pk, now=at(6)).fired == 1
    alert = Alert.objects.get(state="firing")
    assert alert.value == 12.0 and alert.started_at == at(3)


def test_disabled_targets_and_other_boxes_are_not_used(
    people: Any, box: Any, box_factory: Any, email_target: Any
) -> None:
    other = box_factory(organization=people.org)
    rule = alert_rule_create(
        actor=Actor.for_user(people.admin),
        organization=people.org,
        name="One box",
        kind="box_offline",
        duration_minutes=1,
        box=box,
        target_ids=[email_target.pk],
    )
    set_offline(box, since=at(0))
    set_offline(other, since=at(0))
    alert_rule_evaluate(rule_id=rule.pk, now=at(5))
    assert list(Alert.objects.values_list("box_id", flat=True)) == [box.pk]


def test_free_memory_below_fires_for_boxes_that_report_it_and_recovers(
    people: Any, box: Any, box_factory: Any, email_target: Any
) -> None:
    # given a rule "free memory below 64 MiB for 3 minutes", an OTB box reporting 40 MiB free, an
    # agent box (no free memory reported) and an OTB box that is offline
    rule = alert_rule_create(
        actor=Actor.for_user(people.admin),
        organization=people.org,
        name="Low memory",
        kind="mem_free_below",
        threshold=64,
        duration_minutes=3,
        target_ids=[email_target.pk],
    )
    set_online(box)
    BoxStatus.objects.filter(box=box).update(mem_free_kb=40 * 1024)
    agent = box_factory(organization=people.org)
    set_online(agent)
    offline = box_factory(organization=people.org)
    set_offline(offline, since=at(0))
    BoxStatus.objects.filter(box=offline).update(mem_free_kb=1024)
    # when evaluated over 4 minutes
    alert_rule_evaluate(rule_id=rule.pk, now=at(0))
    assert alert_rule_evaluate(rule_id=rule.pk, now=at(2)).fired == 0
    fired = alert_rule_evaluate(rule_id=rule.pk, now=at(4))
    # then it fires for that box only, with the free memory in MiB as its value
    assert fired.fired == 1
    alert = Alert.objects.get()
    assert (alert.box_id, alert.iface, alert.value, alert.state) == (box.pk, "", 40.0, "firing")
    event = Event.objects.get(kind="alert_firing", box=box)
    assert event.data["rule_kind"] == "mem_free_below" and event.data["threshold"] == 64.0
    # when the box frees memory, it recovers
    BoxStatus.objects.filter(box=box).update(mem_free_kb=200 * 1024)
    assert alert_rule_evaluate(rule_id=rule.pk, now=at(12)).resolved == 1


@pytest.mark.parametrize("threshold", [None, -1, 2**21, "64"])
def test_free_memory_rule_needs_a_threshold_in_mib(people: Any, threshold: Any) -> None:
    from fleet.core.errors import InvalidInput

    with pytest.raises(InvalidInput) as refused:
        alert_rule_create(
            actor=Actor.for_user(people.admin),
            organization=people.org,
            name="Low memory",
            kind="mem_free_below",
            threshold=threshold,
            duration_minutes=3,
            target_ids=[],
        )
    assert refused.value.field == "threshold" and "MiB" in refused.value.message
