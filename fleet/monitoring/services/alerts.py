"""Alert evaluation: from the presence tables to debounced alerts and their delivery rows.

Each enabled rule is evaluated in its own transaction under a row lock taken with SKIP LOCKED, so two
overlapping runs (a slow run and the next beat) never evaluate the same rule twice. An alert is
``pending`` while its condition holds for less than ``duration_minutes``, ``firing`` after, and
``resolved`` once it clears. Notifications for one (rule, box, iface) are at least
``NOTIFY_MIN_INTERVAL`` apart: a firing alert whose condition flaps stays firing until it has been
quiet that long, and a new occurrence waits that long after the last recovery notice.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.db import transaction
from django.db.models import Max
from django.utils import timezone

from fleet.core.background import task_queue
from fleet.core.choices import BoxState
from fleet.core.events import events_record_batch
from fleet.monitoring.choices import AlertRuleKind, AlertState, NotificationEvent
from fleet.monitoring.models import Alert, AlertRule, NotificationDelivery
from fleet.telemetry.models import BoxStatus, WanStatus

logger = logging.getLogger(__name__)

NOTIFICATION_DELIVER_TASK = "fleet.monitoring.tasks.notification_deliver_task"

NOTIFY_MIN_INTERVAL = timedelta(minutes=5)

Key = tuple[Any, str]  # (box_id, iface); iface is "" for box-level rules


@dataclass(frozen=True)
class Condition:
    """The condition of a rule holds for a key now; ``since`` when known from presence, else None
    (threshold rules: the evaluation tracks the start on the pending alert)."""

    since: datetime | None
    value: float | None


@dataclass
class EvaluationSummary:
    rules: int = 0
    fired: int = 0
    resolved: int = 0
    deliveries: list[Any] = field(default_factory=list)


def _conditions(rule: AlertRule) -> dict[Key, Condition]:
    if rule.kind == AlertRuleKind.BOX_OFFLINE:
        statuses = BoxStatus.objects.filter(
            box__organization_id=rule.organization_id,
            box__state=BoxState.CLAIMED,
            online=False,
            offline_since__isnull=False,
        )
        if rule.box_id:
            statuses = statuses.filter(box_id=rule.box_id)
        return {
            (box_id, ""): Condition(since=since, value=None)
            for box_id, since in statuses.values_list("box_id", "offline_since")
        }
    if rule.kind == AlertRuleKind.MEM_FREE_BELOW:
        # Online boxes only (an offline box's last report is stale), and only those that report their
        # free memory: an otb-agent box sends none (its mem_free_kb is null) and never matches.
        statuses = BoxStatus.objects.filter(
            box__organization_id=rule.organization_id,
            box__state=BoxState.CLAIMED,
            online=True,
            mem_free_kb__lt=(rule.threshold or 0) * 1024,
        )
        if rule.box_id:
            statuses = statuses.filter(box_id=rule.box_id)
        return {
            (box_id, ""): Condition(since=None, value=round((free_kb or 0) / 1024, 1))
            for box_id, free_kb in statuses.values_list("box_id", "mem_free_kb")
        }
    # WAN rules only look at boxes that are online: an offline box's WAN rows are stale, and the
    # box_offline rule covers it.
    wans = WanStatus.objects.filter(
        box__organization_id=rule.organization_id,
        box__state=BoxState.CLAIMED,
        box__status__online=True,
    )
    if rule.box_id:
        wans = wans.filter(box_id=rule.box_id)
    if rule.kind == AlertRuleKind.WAN_DOWN:
        rows = wans.filter(up=False).values_list("box_id", "iface", "up_changed_at")
        return {(box_id, iface): Condition(since=since, value=None) for box_id, iface, since in rows}
    metric = "loss_pct" if rule.kind == AlertRuleKind.LOSS_ABOVE else "rtt_ms"
    breaches: Any = wans.filter(up=True, **{f"{metric}__gt": rule.threshold}).values_list(
        "box_id", "iface", metric
    )
    return {(box_id, iface): Condition(since=None, value=value) for box_id, iface, value in breaches}


def _recent_notifications(rule: AlertRule, now: datetime) -> dict[Key, datetime]:
    rows = (
        Alert.objects.filter(
            rule=rule, state=AlertState.RESOLVED, last_notified_at__gt=now - NOTIFY_MIN_INTERVAL
        )
        .values_list("box_id", "iface")
        .annotate(last=Max("last_notified_at"))
    )
    return {(box_id, iface): last for box_id, iface, last in rows}


def _quiet(last: datetime | None, now: datetime) -> bool:
    return last is None or now - last >= NOTIFY_MIN_INTERVAL


def _event(alert: Alert, rule: AlertRule, kind: str, now: datetime) -> dict[str, Any]:
    return {
        "box_id": alert.box_id,
        "organization_id": alert.organization_id,
        "kind": kind,
        "ts": now,
        "data": {
            "alert_id": str(alert.pk),
            "rule_id": str(rule.pk),
            "rule_name": rule.name,
            "rule_kind": rule.kind,
            "iface": alert.iface,
            "threshold": rule.threshold,
            "value": alert.value,
            "started_at": alert.started_at.isoformat(),
        },
    }


def alert_rule_evaluate(*, rule_id: Any, now: datetime | None = None) -> EvaluationSummary:
    """Evaluate one rule against current presence; creates, fires, resolves or drops its alerts and
    creates one delivery per enabled target for every firing or recovery. Deliveries are queued
    after commit. Returns counts; a rule locked by another run is skipped."""
    now = now or timezone.now()
    summary = EvaluationSummary()
    with transaction.atomic():
        rule = AlertRule.objects.select_for_update(skip_locked=True).filter(pk=rule_id, enabled=True).first()
        if rule is None:
            return summary
        summary.rules = 1
        duration = timedelta(minutes=rule.duration_minutes)
        conditions = _conditions(rule)
        open_alerts = {
            (alert.box_id, alert.iface): alert
            for alert in Alert.objects.select_for_update().filter(
                rule=rule, state__in=[AlertState.PENDING, AlertState.FIRING]
            )
        }
        recent = _recent_notifications(rule, now)
        new_alerts = [
            Alert(
                rule=rule,
                organization_id=rule.organization_id,
                box_id=key[0],
                iface=key[1],
                state=AlertState.PENDING,
                started_at=condition.since or now,
                value=condition.value,
            )
            for key, condition in conditions.items()
            if key not in open_alerts
        ]
        if new_alerts:
            Alert.objects.bulk_create(new_alerts)
            open_alerts.update({(alert.box_id, alert.iface): alert for alert in new_alerts})
        fired: list[Alert] = []
        resolved: list[Alert] = []
        to_save: list[Alert] = []
        for key, alert in open_alerts.items():
            condition = conditions.get(key)
            if condition is None:
                if alert.state == AlertState.PENDING:
                    alert.delete()  # a blip shorter than N minutes: forget it
                elif _quiet(alert.last_notified_at, now):
                    alert.state, alert.resolved_at, alert.last_notified_at = AlertState.RESOLVED, now, now
                    resolved.append(alert)
                    to_save.append(alert)
                continue
            alert.value = condition.value
            if alert.state == AlertState.PENDING:
                if condition.since is not None:
                    alert.started_at = condition.since
                if now - alert.started_at >= duration and _quiet(recent.get(key), now):
                    alert.state, alert.fired_at, alert.last_notified_at = AlertState.FIRING, now, now
                    fired.append(alert)
            to_save.append(alert)
        if to_save:
            Alert.objects.bulk_update(
                to_save, ["state", "value", "started_at", "fired_at", "resolved_at", "last_notified_at"]
            )
        if fired or resolved:
            targets = list(rule.targets.filter(enabled=True))
            deliveries = [
                NotificationDelivery(alert=alert, target=target, event=event)
                for alerts, event in (
                    (fired, NotificationEvent.FIRING),
                    (resolved, NotificationEvent.RESOLVED),
                )
                for alert in alerts
                for target in targets
            ]
            NotificationDelivery.objects.bulk_create(deliveries)
            events_record_batch(
                [_event(alert, rule, "alert_firing", now) for alert in fired]
                + [_event(alert, rule, "alert_resolved", now) for alert in resolved]
            )
            delivery_ids = [delivery.pk for delivery in deliveries]
            transaction.on_commit(lambda: notifications_queue(delivery_ids=delivery_ids))
            summary.deliveries = delivery_ids
        summary.fired, summary.resolved = len(fired), len(resolved)
    return summary


def notifications_queue(*, delivery_ids: list[Any]) -> None:
    """Queue one Celery task per delivery (call after commit)."""
    for delivery_id in delivery_ids:
        # A delivery not queued stays pending; the stale-delivery sweep re-queues it.
        task_queue(NOTIFICATION_DELIVER_TASK, str(delivery_id))


def alerts_evaluate(*, now: datetime | None = None) -> EvaluationSummary:
    """Evaluate every enabled rule, each in its own short transaction. Returns the totals."""
    total = EvaluationSummary()
    for rule_id in AlertRule.objects.filter(enabled=True).order_by("pk").values_list("pk", flat=True):
        summary = alert_rule_evaluate(rule_id=rule_id, now=now)
        total.rules += summary.rules
        total.fired += summary.fired
        total.resolved += summary.resolved
        total.deliveries += summary.deliveries
    return total
