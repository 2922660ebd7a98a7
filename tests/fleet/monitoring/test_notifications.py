"""Delivering notifications (fleet.monitoring.services.notifications): by email, and by signed
webhook to a real local HTTP receiver; failures recorded until the last attempt; a task that comes
before the attempt is due does nothing; the sweep queues the overdue deliveries nobody is sending."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import psycopg
import pytest
import redis
from django.conf import settings
from django.core import mail
from django.db import connection
from django.utils import timezone

from fleet.core.audit import Actor
from fleet.core.errors import Conflict
from fleet.core.models import AuditLog
from fleet.monitoring.models import NotificationDelivery
from fleet.monitoring.services import (
    MAX_ATTEMPTS,
    alert_rule_evaluate,
    alert_rule_test_notify,
    notification_deliver,
    notification_target_create,
    notifications_requeue_stale,
)
from fleet.monitoring.services.alerts import NOTIFICATION_DELIVER_TASK
from fleet.monitoring.webhooks import webhook_signature_valid
from tests.fleet.monitoring.conftest import WebhookReceiver, at, offline_rule, set_offline

pytestmark = pytest.mark.django_db


def test_email_delivery_lands_in_the_outbox(people: Any, box: Any, email_target: Any) -> None:
    # given a fired alert with an email target
    rule = offline_rule(people, [email_target])
    set_offline(box, since=at(0))
    alert_rule_evaluate(rule_id=rule.pk, now=at(6))
    delivery = NotificationDelivery.objects.get()
    # when the delivery is attempted
    outcome = notification_deliver(delivery_id=delivery.pk)
    # then an email went out and the delivery is recorded as sent
    assert outcome is not None and outcome.state == "sent" and not outcome.retry
    assert len(mail.outbox) == 1
    assert mail.outbox[0].to == ["noc@example.com"]
    assert mail.outbox[0].extra_headers["Message-ID"] == f"<notification-{delivery.pk}@127.0.0.1>"
    assert "FIRING" in mail.outbox[0].subject and box.serial in mail.outbox[0].body
    delivery.refresh_from_db()
    assert delivery.attempts == 1 and delivery.sent_at is not None
    # and a second attempt does nothing
    notification_deliver(delivery_id=delivery.pk)
    assert len(mail.outbox) == 1


def test_webhook_is_signed_with_the_secret_shown_once(
    people: Any, box: Any, receiver: WebhookReceiver
) -> None:
    # given a webhook target (its secret returned once) on a fired alert
    target, secret = notification_target_create(
        actor=Actor.for_user(people.admin),
        organization=people.org,
        name="Hook",
        kind="webhook",
        url=receiver.url,
    )
    assert secret and secret not in target.secret_ciphertext
    rule = offline_rule(people, [target])
    set_offline(box, since=at(0))
    alert_rule_evaluate(rule_id=rule.pk, now=at(6))
    delivery = NotificationDelivery.objects.get()
    # when delivered
    outcome = notification_deliver(delivery_id=delivery.pk)
    # then the receiver got a JSON body whose HMAC matches the header, with the event headers
    assert outcome is not None and outcome.state == "sent"
    (request,) = receiver.requests
    headers = {key.lower(): value for key, value in request["headers"].items()}
    assert webhook_signature_valid(secret, request["body"], headers["x-otb-signature"])
    assert not webhook_signature_valid("whsec_wrong", request["body"], headers["x-otb-signature"])
    assert headers["x-otb-event"] == "alert.firing"
    body = json.loads(request["body"])
    assert body["event"] == "alert.firing" and body["box"]["serial"] == box.serial
    assert int(headers["x-otb-timestamp"]) == body["sent_at"]
    delivery.refresh_from_db()
    assert delivery.response_status == 200


def test_webhook_failures_are_recorded_and_end_after_max_attempts(people: Any, box: Any) -> None:
    failing = WebhookReceiver(statuses=[500] * 10)
    try:
        target, _ = notification_target_create(
            actor=Actor.for_user(people.admin),
            organization=people.org,
            name="Hook",
            kind="webhook",
            url=failing.url,
        )
        rule = offline_rule(people, [target])
        set_offline(box, since=at(0))
        alert_rule_evaluate(rule_id=rule.pk, now=at(6))
        delivery = NotificationDelivery.objects.get()
        outcomes = []
        for _ in range(MAX_ATTEMPTS):
            NotificationDelivery.objects.filter(pk=delivery.pk).update(next_attempt_at=timezone.now())
            outcomes.append(notification_deliver(delivery_id=delivery.pk))
        retries = [outcome.retry if outcome is not None else None for outcome in outcomes]
        assert retries == [True] * (MAX_ATTEMPTS - 1) + [False]
        delivery.refresh_from_db()
        assert delivery.state == "failed" and delivery.attempts == MAX_ATTEMPTS
        assert delivery.response_status == 500 and "500" in delivery.last_error
        assert len(failing.requests) == MAX_ATTEMPTS
    finally:
        failing.close()


def test_a_test_notification_reaches_every_target_of_the_rule_and_says_what_each_did(
    people: Any, email_target: Any
) -> None:
    # given a rule notifying an email address, a working webhook and a failing one
    receiver, failing = WebhookReceiver(), WebhookReceiver(statuses=[500])
    try:
        hook, secret = notification_target_create(
            actor=Actor.for_user(people.admin),
            organization=people.org,
            name="Hook",
            kind="webhook",
            url=receiver.url,
        )
        assert secret is not None
        broken, _ = notification_target_create(
            actor=Actor.for_user(people.admin),
            organization=people.org,
            name="Broken",
            kind="webhook",
            url=failing.url,
        )
        rule = offline_rule(people, [email_target, hook, broken])
        # when an admin sends a test notification
        results = alert_rule_test_notify(actor=Actor.for_user(people.admin), rule=rule)
    finally:
        receiver.close()
        failing.close()
    # then each target is reported in words: the mail and the working hook sent, the broken one failed
    by_name = {result.target: result for result in results}
    assert by_name["NOC"].sent and by_name["NOC"].detail == "sent to noc@example.com"
    assert by_name["Hook"].sent and by_name["Hook"].detail == "answered HTTP 200"
    assert not by_name["Broken"].sent and "HTTP 500" in by_name["Broken"].detail
    # the email says it is a test; the webhook is signed like any other, with the event alert.test
    (email,) = mail.outbox
    assert email.subject == "[otb] TEST: Box offline" and "test" in email.body
    (request,) = receiver.requests
    headers = {key.lower(): value for key, value in request["headers"].items()}
    assert headers["x-otb-event"] == "alert.test"
    assert webhook_signature_valid(secret, request["body"], headers["x-otb-signature"])
    assert json.loads(request["body"])["test"] is True
    # nothing is stored as a delivery, and the test is in the audit log
    assert not NotificationDelivery.objects.exists()
    assert AuditLog.objects.filter(action="alert_rule.test").count() == 1


def test_a_test_notification_of_a_rule_without_targets_is_refused(people: Any) -> None:
    rule = offline_rule(people, [])
    with pytest.raises(Conflict) as refused:
        alert_rule_test_notify(actor=Actor.for_user(people.admin), rule=rule)
    assert refused.value.field == "targets" and refused.value.message.startswith("This rule notifies nobody")


def test_a_task_that_comes_before_the_attempt_is_due_does_nothing(people: Any, box: Any) -> None:
    # given a delivery whose first attempt failed (the next one due after the backoff)
    failing = WebhookReceiver(statuses=[500] * 10)
    try:
        target, _ = notification_target_create(
            actor=Actor.for_user(people.admin), organization=people.org, name="Hook", kind="webhook",
            url=failing.url,
        )  # fmt: skip
        rule = offline_rule(people, [target])
        set_offline(box, since=at(0))
        alert_rule_evaluate(rule_id=rule.pk, now=at(6))
        delivery = NotificationDelivery.objects.get()
        first = notification_deliver(delivery_id=delivery.pk)
        assert first is not None and first.retry
        delivery.refresh_from_db()
        assert delivery.next_attempt_at > timezone.now() + timedelta(seconds=20)
        # when a second copy of its task runs now (the sweep's, or one the broker handed out again)
        early = notification_deliver(delivery_id=delivery.pk)
        # then nothing is sent and nothing recorded; the retry that is due will make the attempt
        assert early is not None and (early.state, early.attempts, early.retry) == ("pending", 1, False)
        assert len(failing.requests) == 1
    finally:
        failing.close()


def _queued_deliveries() -> list[str]:
    """Delivery ids of the notification tasks waiting in the broker's default queue (Redis)."""
    client = redis.Redis.from_url(settings.REDIS_URL)
    queued = []
    for raw in client.lrange("default", 0, -1):
        message = json.loads(raw)
        if message["headers"]["task"] == NOTIFICATION_DELIVER_TASK:
            queued.append(message["headers"]["argsrepr"].strip("(),' "))
    return queued


@pytest.mark.django_db(transaction=True)
def test_the_sweep_queues_overdue_deliveries_that_no_worker_is_sending(
    people: Any, box_factory: Any, email_target: Any
) -> None:
    # given three pending deliveries: one overdue (its task lost with a killed worker), one due a
    # moment ago (its task may just be waiting in the queue), and one overdue being sent right now
    rule = offline_rule(people, [email_target])
    boxes = [box_factory(organization=people.org) for _ in range(3)]
    for box in boxes:
        set_offline(box, since=at(0))
    alert_rule_evaluate(rule_id=rule.pk, now=at(6))
    overdue, recent, busy = NotificationDelivery.objects.order_by("alert__box__serial")
    now = timezone.now()
    NotificationDelivery.objects.filter(pk__in=[overdue.pk, busy.pk]).update(
        next_attempt_at=now - timedelta(minutes=10)
    )
    NotificationDelivery.objects.filter(pk=recent.pk).update(next_attempt_at=now - timedelta(seconds=30))
    redis.Redis.from_url(settings.REDIS_URL).delete("default")
    db = connection.settings_dict
    with psycopg.connect(
        host=db["HOST"], port=db["PORT"], user=db["USER"], dbname=db["NAME"], autocommit=False
    ) as sender:  # another worker, mid-attempt: it holds the row
        sender.execute("SELECT 1 FROM monitoring_notificationdelivery WHERE id = %s FOR UPDATE", [busy.pk])
        # when the sweep runs
        queued = notifications_requeue_stale(now=now)
        sender.rollback()
    # then only the overdue delivery nobody holds is queued again
    assert queued == 1
    assert _queued_deliveries() == [str(overdue.pk)]
