"""Delivering notifications (fleet.monitoring.services.notifications): by email, and by signed
webhook to a real local HTTP receiver; failures recorded until the last attempt."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.core import mail

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
)
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
        outcomes = [notification_deliver(delivery_id=delivery.pk) for _ in range(MAX_ATTEMPTS)]
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
