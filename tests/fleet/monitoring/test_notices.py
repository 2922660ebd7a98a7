"""Notices of box events (fleet.monitoring.services.notices): an event of NOTIFIED_KINDS is queued for
notification after its commit; its deliveries go to the organisation's enabled targets (by email and
signed webhook, like alerts) or, without any, to its owners; sending is idempotent and a sweep finds
the notices whose task was lost."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest
from celery import current_app
from django.core import mail
from django.utils import timezone

from fleet.core.audit import Actor
from fleet.core.choices import EventKind
from fleet.core.events import EVENT_NOTICE_TASK, event_record
from fleet.core.models import Event
from fleet.monitoring.models import NotificationDelivery
from fleet.monitoring.services import (
    event_notice_send,
    event_notices_sweep,
    notification_deliver,
    notification_target_create,
)
from fleet.monitoring.webhooks import webhook_signature_valid
from tests.fleet.monitoring.conftest import WebhookReceiver

pytestmark = pytest.mark.django_db

CHANGE = {
    "old_public_ipv4": "198.51.100.1",
    "new_public_ipv4": "192.0.2.1",
    "server": "agg-east-1",
    "region": "us-east",
    "ipv6_prefix_changed": True,
    "reason": "reassigned",
}


def _ip_changed(box: Any, **overrides: Any) -> Event:
    return event_record(box_id=box.pk, kind=EventKind.PUBLIC_IP_CHANGED, data={**CHANGE, **overrides})


def test_an_ip_change_is_queued_for_notice_after_commit_and_other_events_are_not(
    box: Any, queued_event_tasks: list[Any], django_capture_on_commit_callbacks: Any
) -> None:
    # when a public IP change and a WAN event are recorded
    with django_capture_on_commit_callbacks(execute=True):
        change = _ip_changed(box)
        event_record(box_id=box.pk, kind=EventKind.WAN_DOWN, data={"iface": "wan1"})
    # then only the change is queued, by the name of the monitoring task that sends it
    assert queued_event_tasks == [(EVENT_NOTICE_TASK, (str(change.pk),))]
    current_app.loader.import_default_modules()
    assert EVENT_NOTICE_TASK in current_app.tasks


def test_the_notice_reaches_every_enabled_target_by_email_and_signed_webhook(
    people: Any, box: Any, email_target: Any, django_capture_on_commit_callbacks: Any
) -> None:
    # given an email target, a webhook target, and a disabled target
    receiver = WebhookReceiver()
    try:
        hook, secret = notification_target_create(
            actor=Actor.for_user(people.admin),
            organization=people.org,
            name="Hook",
            kind="webhook",
            url=receiver.url,
        )
        notification_target_create(
            actor=Actor.for_user(people.admin),
            organization=people.org,
            name="Off",
            kind="email",
            email="off@example.com",
            enabled=False,
        )
        change = _ip_changed(box)

        # when its notice is sent and delivered
        pending = event_notice_send(event_id=change.pk)
        for delivery_id in pending:
            outcome = notification_deliver(delivery_id=delivery_id)
            assert outcome is not None and outcome.state == "sent", outcome

        # then the email says what changed and what to do
        assert len(pending) == 2
        assert [message.to for message in mail.outbox] == [["noc@example.com"]]
        message = mail.outbox[0]
        assert message.subject == f"[otb] {box.serial}: public IP changed to 192.0.2.1"
        assert "changed from 198.51.100.1 to 192.0.2.1" in message.body
        assert "server agg-east-1 (region us-east)" in message.body and "IPv6 prefix changed" in message.body
        # and the webhook is signed, with the notice in the body
        (request,) = receiver.requests
        headers = {key.lower(): value for key, value in request["headers"].items()}
        assert secret is not None and webhook_signature_valid(
            secret, request["body"], headers["x-otb-signature"]
        )
        assert headers["x-otb-event"] == "box.public_ip_changed"
        body = json.loads(request["body"])
        assert body["notice"]["data"] == CHANGE and body["box"]["serial"] == box.serial
        assert body["organization"] == str(people.org.pk) and body["notice"]["id"] == str(change.pk)
        assert NotificationDelivery.objects.get(target=hook).box_event_id == change.pk
    finally:
        receiver.close()


def test_an_organization_without_targets_is_told_at_its_owners_addresses(people: Any, box: Any) -> None:
    # given an organisation with no notification target
    change = _ip_changed(box)
    # when the notice is sent, then its owner (only) gets it by email
    for delivery_id in event_notice_send(event_id=change.pk):
        notification_deliver(delivery_id=delivery_id)
    assert [message.to for message in mail.outbox] == [[people.owner.email]]
    assert "198.51.100.1 to 192.0.2.1" in mail.outbox[0].body
    delivery = NotificationDelivery.objects.get()
    assert delivery.target is None and delivery.email == people.owner.email and delivery.state == "sent"


def test_sending_twice_creates_nothing_more_and_the_sweep_finds_lost_notices(
    people: Any, box: Any, email_target: Any
) -> None:
    # given a change whose task was lost, and one already sent
    lost = _ip_changed(box)
    sent = _ip_changed(box, new_public_ipv4="192.0.2.2")
    event_notice_send(event_id=sent.pk)
    # when the notice is sent again, then nothing new is created
    event_notice_send(event_id=sent.pk)
    assert NotificationDelivery.objects.filter(box_event=sent).count() == 1
    # and the sweep (past its grace period) sends only the lost one
    assert event_notices_sweep(now=timezone.now() + timedelta(minutes=10)) == 1
    assert NotificationDelivery.objects.filter(box_event=lost).count() == 1
    assert event_notices_sweep(now=timezone.now() + timedelta(minutes=10)) == 0
    # and an event of another kind is never noticed
    other = event_record(box_id=box.pk, kind=EventKind.WAN_DOWN, data={"iface": "wan1"})
    assert event_notice_send(event_id=other.pk) == []


def test_customers_see_the_deliveries_of_their_notices(people: Any, box: Any, client_for: Any) -> None:
    change = _ip_changed(box)
    event_notice_send(event_id=change.pk)
    mine = client_for(people.viewer).get("/api/v1/notification-deliveries/").json()["results"]
    assert [(row["box_event"], row["alert"], row["email"], row["target"]) for row in mine] == [
        (str(change.pk), None, people.owner.email, None)
    ]
    assert client_for(people.outsider).get("/api/v1/notification-deliveries/").json()["results"] == []
