"""Sending notification deliveries (of alerts, and notices of box events): email or signed webhook,
one attempt per call, every attempt recorded on the delivery row. The Celery task retries with
exponential backoff.

PostgreSQL, not the broker, says what is left to send: a delivery is ``pending`` with the time its
next attempt is due (``next_attempt_at``) until an attempt succeeds or the last one fails. The row
stays locked during an attempt, so a second task for it waits its turn or skips it, and a task that
comes before the attempt is due does nothing. A worker killed mid-attempt rolls the attempt back
(the delivery is still pending, still due); the sweep (``notifications_requeue_stale``, every
minute) queues every pending delivery overdue by ``NOTIFY_STALE_AFTER_S`` that no worker holds.
Only an attempt cut off after the receiver read it can reach the receiver twice, with the same
``delivery_id`` (webhooks) or ``Message-ID`` (emails) to drop the repeat by."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast
from urllib.parse import urlsplit
from uuid import UUID

from django.conf import settings
from django.core.mail import EmailMessage, send_mail
from django.db import transaction
from django.urls import reverse
from django.utils import timezone

from fleet.core.access import authorize
from fleet.core.audit import Actor, audit_record
from fleet.core.choices import EventKind, Role
from fleet.core.errors import Conflict
from fleet.core.links import public_link
from fleet.core.models import Event
from fleet.monitoring.choices import DeliveryState, TargetKind
from fleet.monitoring.models import Alert, AlertRule, NotificationDelivery, NotificationTarget
from fleet.monitoring.services.alerts import notifications_queue
from fleet.monitoring.webhooks import webhook_post
from provisioning.secrets import SecretDecryptionError, secret_decrypt

logger = logging.getLogger(__name__)

MAX_ATTEMPTS = 6
# A task that comes this much before the attempt is due still makes it (Celery's ETA timer is not
# to the millisecond); earlier, it is a duplicate and does nothing.
DUE_TOLERANCE = timedelta(seconds=1)


@dataclass(frozen=True)
class DeliveryOutcome:
    """What one attempt did: ``retry`` asks the caller to try again later."""

    state: str
    attempts: int
    retry: bool


def notification_retry_delay(attempts: int) -> float:
    """Seconds before the next attempt: base * 2^(attempts-1), capped at an hour."""
    base = float(cast(float, settings.OTB.get("NOTIFY_RETRY_BASE_S", 30)))
    factor: int = 2 ** max(attempts - 1, 0)  # typeshed types int ** int as Any (a negative power is a float)
    return min(base * factor, 3600.0)


def notification_payload(delivery: NotificationDelivery, now: datetime) -> dict[str, Any]:
    """The webhook JSON body (also the source of the email text): an alert event, or a notice of a
    box event. ``box.url`` is the box's portal page on the public address (OTB_PUBLIC_URL)."""
    if delivery.box_event is not None:
        return _notice_payload(delivery, delivery.box_event, now)
    alert = cast(Alert, delivery.alert)
    rule, box = alert.rule, alert.box
    return {
        "event": f"alert.{delivery.event}",
        "delivery_id": str(delivery.pk),
        "sent_at": int(now.timestamp()),
        "organization": str(alert.organization_id),
        "alert": {
            "id": str(alert.pk),
            "state": alert.state,
            "iface": alert.iface or None,
            "value": alert.value,
            "started_at": alert.started_at.isoformat(),
            "fired_at": alert.fired_at.isoformat() if alert.fired_at else None,
            "resolved_at": alert.resolved_at.isoformat() if alert.resolved_at else None,
        },
        "rule": {
            "id": str(rule.pk),
            "name": rule.name,
            "kind": rule.kind,
            "threshold": rule.threshold,
            "duration_minutes": rule.duration_minutes,
        },
        "box": {
            "id": str(box.pk),
            "serial": box.serial,
            "name": box.name,
            "url": public_link(reverse("frontend:box", args=[box.pk])),
        },
    }


def _notice_payload(delivery: NotificationDelivery, event: Event, now: datetime) -> dict[str, Any]:
    box = event.box
    return {
        "event": f"box.{event.kind}",
        "delivery_id": str(delivery.pk),
        "sent_at": int(now.timestamp()),
        "organization": str(event.organization_id),
        "notice": {"id": str(event.pk), "kind": event.kind, "ts": event.ts.isoformat(), "data": event.data},
        "box": {
            "id": str(box.pk),
            "serial": box.serial,
            "name": box.name,
            "url": public_link(reverse("frontend:box", args=[box.pk])),
        },
    }


def _notice_email_text(payload: dict[str, Any]) -> tuple[str, str]:
    box, notice = payload["box"], payload["notice"]
    data, which = notice["data"], box["name"] or box["serial"]
    if notice["kind"] == EventKind.PUBLIC_IP_CHANGED:
        old, new = data.get("old_public_ipv4") or "none", data.get("new_public_ipv4") or "none"
        subject = f"[otb] {which}: public IP changed to {new}"
        lines = [
            f"The public IPv4 address of box {box['serial']} {box['name']}".rstrip()
            + f" changed from {old} to {new} at {notice['ts']}.",
            f"Our support moved it to server {data['server']} (region {data['region']})."
            if data.get("server")
            else "",
            "Its delegated IPv6 prefix changed too." if data.get("ipv6_prefix_changed") else "",
            "Update firewall rules, DNS records and allow-lists that name the old address.",
            f"Box page: {box['url']}",
        ]
    else:
        label = EventKind(notice["kind"]).label
        subject = f"[otb] {which}: {label}"
        lines = [f"{label} on box {box['serial']} at {notice['ts']}."]
        lines += [f"{key}: {value}" for key, value in sorted(data.items())]
        lines.append(f"Box page: {box['url']}")
    return subject, "\n".join(line for line in lines if line) + "\n"


def _email_text(payload: dict[str, Any]) -> tuple[str, str]:
    if "notice" in payload:
        return _notice_email_text(payload)
    rule, box, alert = payload["rule"], payload["box"], payload["alert"]
    where = f"{box['name'] or box['serial']}" + (f" / {alert['iface']}" if alert["iface"] else "")
    status = "FIRING" if payload["event"] == "alert.firing" else "RESOLVED"
    subject = f"[otb] {status}: {rule['name']} on {where}"
    lines = [
        f"Alert {status.lower()}: {rule['name']} ({rule['kind']})",
        f"Box: {box['serial']} {box['name']}".rstrip(),
        f"WAN: {alert['iface']}" if alert["iface"] else "",
        f"Threshold: {rule['threshold']}  Current value: {alert['value']}"
        if rule["threshold"] is not None
        else "",
        f"Condition since: {alert['started_at']}",
        f"Resolved at: {alert['resolved_at']}" if alert["resolved_at"] else "",
        f"Box page: {box['url']}",
    ]
    return subject, "\n".join(line for line in lines if line) + "\n"


def notification_message_id(delivery: NotificationDelivery) -> str:
    """The email's Message-ID: one per delivery, the same on every attempt (a repeat after a worker
    died mid-send is recognisably the same message)."""
    host = urlsplit(settings.OTB_PUBLIC_URL).hostname or "otb-fleet"
    return f"<notification-{delivery.pk}@{host}>"


def _attempt(delivery: NotificationDelivery, now: datetime) -> tuple[bool, int | None, str]:
    target = delivery.target
    payload = notification_payload(delivery, now)
    if target is None or target.kind == TargetKind.EMAIL:
        subject, text = _email_text(payload)
        address = target.email if target is not None else delivery.email
        message = EmailMessage(
            subject, text, None, [address], headers={"Message-ID": notification_message_id(delivery)}
        )
        try:
            message.send(fail_silently=False)
        except Exception as exc:  # any SMTP/backend failure is a failed attempt, retried
            return False, None, f"{exc.__class__.__name__}: {exc}"[:500]
        return True, None, ""
    try:
        secret = secret_decrypt(target.secret_ciphertext)
    except SecretDecryptionError as exc:
        return False, None, str(exc)
    body = json.dumps(payload, separators=(",", ":"), sort_keys=True).encode("utf-8")
    response = webhook_post(
        url=target.url, secret=secret, event=payload["event"], body=body, timestamp=payload["sent_at"]
    )
    return not response.error, response.status, response.error


def notification_deliver(*, delivery_id: UUID | str) -> DeliveryOutcome | None:
    """Make one attempt at a pending delivery whose attempt is due, and record it. The row stays
    locked during the attempt (at most the 10 s webhook timeout) so two workers never send it twice;
    a failed attempt sets when the next one is due (backoff). After ``MAX_ATTEMPTS`` failures the
    delivery is ``failed``. None if the delivery is gone or busy; ``retry`` False and the state
    ``pending`` when it is not due yet (a duplicate task: the one that is due comes later)."""
    now = timezone.now()
    with transaction.atomic():
        delivery = (
            NotificationDelivery.objects.select_for_update(skip_locked=True, of=("self",))
            .select_related("target", "alert", "alert__rule", "alert__box", "box_event", "box_event__box")
            .filter(pk=delivery_id)
            .first()
        )
        if delivery is None:
            logger.info("delivery %s not found or being sent elsewhere", delivery_id)
            return None
        if delivery.state != DeliveryState.PENDING or delivery.next_attempt_at > now + DUE_TOLERANCE:
            return DeliveryOutcome(state=delivery.state, attempts=delivery.attempts, retry=False)
        if delivery.target is not None and not delivery.target.enabled:
            delivery.state, delivery.last_error = DeliveryState.FAILED, "target disabled"
            delivery.save(update_fields=["state", "last_error"])
            return DeliveryOutcome(state=delivery.state, attempts=delivery.attempts, retry=False)
        ok, status, error = _attempt(delivery, now)
        delivery.attempts += 1
        delivery.response_status = status
        delivery.last_error = error
        if ok:
            delivery.state, delivery.sent_at = DeliveryState.SENT, timezone.now()
        elif delivery.attempts >= MAX_ATTEMPTS:
            delivery.state = DeliveryState.FAILED
        else:
            delay = timedelta(seconds=notification_retry_delay(delivery.attempts))
            delivery.next_attempt_at = timezone.now() + delay
        delivery.save(
            update_fields=["attempts", "response_status", "last_error", "state", "sent_at", "next_attempt_at"]
        )
        if not ok:
            logger.warning("delivery %s attempt %d failed: %s", delivery.pk, delivery.attempts, error)
    return DeliveryOutcome(
        state=delivery.state, attempts=delivery.attempts, retry=delivery.state == DeliveryState.PENDING
    )


@dataclass(frozen=True)
class TestNotificationResult:
    """What a test notification did for one target: ``detail`` says it in words."""

    target: str
    kind: str
    sent: bool
    detail: str


def _test_payload(rule: AlertRule, now: datetime) -> dict[str, Any]:
    box = rule.box
    return {
        "event": "alert.test",
        "test": True,
        "sent_at": int(now.timestamp()),
        "organization": str(rule.organization_id),
        "rule": {
            "id": str(rule.pk),
            "name": rule.name,
            "kind": rule.kind,
            "threshold": rule.threshold,
            "duration_minutes": rule.duration_minutes,
        },
        "box": {
            "id": str(box.pk),
            "serial": box.serial,
            "name": box.name,
            "url": public_link(reverse("frontend:box", args=[box.pk])),
        }
        if box
        else None,
    }


def _test_send(target: NotificationTarget, payload: dict[str, Any]) -> TestNotificationResult:
    if not target.enabled:
        return TestNotificationResult(target.name, target.kind, False, "not sent: the target is disabled")
    if target.kind == TargetKind.EMAIL:
        rule = payload["rule"]
        text = (
            f"This is a test of the alert rule “{rule['name']}” on otb-fleet.\n\n"
            "Its alerts are sent to this address. Nothing is wrong: no alert is firing.\n"
        )
        try:
            send_mail(f"[otb] TEST: {rule['name']}", text, None, [target.email], fail_silently=False)
        except Exception as exc:  # any SMTP/backend failure is reported, not raised
            return TestNotificationResult(target.name, target.kind, False, f"not sent: {exc}"[:300])
        return TestNotificationResult(target.name, target.kind, True, f"sent to {target.email}")
    try:
        secret = secret_decrypt(target.secret_ciphertext)
    except SecretDecryptionError as exc:
        return TestNotificationResult(target.name, target.kind, False, f"not sent: {exc}"[:300])
    body = json.dumps(payload, separators=(",", ":"), sort_keys=True).encode("utf-8")
    response = webhook_post(
        url=target.url, secret=secret, event=payload["event"], body=body, timestamp=payload["sent_at"]
    )
    if response.error:
        return TestNotificationResult(target.name, target.kind, False, f"failed: {response.error}"[:300])
    return TestNotificationResult(target.name, target.kind, True, f"answered HTTP {response.status}")


def alert_rule_test_notify(*, actor: Actor, rule: AlertRule) -> list[TestNotificationResult]:
    """Send a test notification of ``rule`` to each of its targets now, and say what each did
    (admin of the rule's organisation). The email says it is a test; the webhook's event is
    ``alert.test``, signed like any other. Nothing is stored but the audit entry; a target that
    fails is reported, never retried. A rule without targets is refused (field ``targets``)."""
    authorize(actor, organization_id=rule.organization_id, minimum=Role.ADMIN)
    rule = AlertRule.objects.select_related("box").get(pk=rule.pk)
    targets = list(rule.targets.order_by("name", "pk"))
    if not targets:
        raise Conflict(
            "This rule notifies nobody: choose at least one notification target for it first.",
            field="targets",
        )
    with transaction.atomic():
        audit_record(
            actor=actor,
            action="alert_rule.test",
            organization=rule.organization,
            target=rule,
            after={"targets": [str(target.pk) for target in targets]},
        )
    # sent after the audit entry is committed, outside any transaction (a webhook may take seconds)
    payload = _test_payload(rule, timezone.now())
    return [_test_send(target, payload) for target in targets]


def notifications_requeue_stale(*, now: datetime | None = None) -> int:
    """Queue again the pending deliveries whose attempt is overdue by more than
    ``NOTIFY_STALE_AFTER_S`` and that no worker is attempting (those rows are locked and skipped):
    their task was lost (a worker killed mid-delivery, a broker restart, a retry too far off for a
    broker countdown). The row lock and the due check in ``notification_deliver`` make a task that
    turns up twice harmless. Returns how many were queued (at most 1000 a sweep, oldest first)."""
    now = now or timezone.now()
    stale_after = timedelta(seconds=int(cast(int, settings.OTB.get("NOTIFY_STALE_AFTER_S", 120))))
    with transaction.atomic():
        ids = list(
            NotificationDelivery.objects.select_for_update(skip_locked=True)
            .filter(state=DeliveryState.PENDING, next_attempt_at__lt=now - stale_after)
            .order_by("next_attempt_at")
            .values_list("pk", flat=True)[:1000]
        )
        if ids:
            logger.info("re-queueing %d overdue notification deliveries", len(ids))
            transaction.on_commit(lambda: notifications_queue(delivery_ids=ids))
    return len(ids)
