"""Every absolute link the service sends starts with the configured public address (OTB_PUBLIC_URL),
whatever Host the request that caused it carried: invitation and password-reset emails, alert emails
and webhook payloads, notices of box events, the API's page links (limit/offset and cursor), the
OpenAPI schema's server."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from django.core import mail
from django.test import Client
from rest_framework.test import APIClient

from fleet.core.audit import Actor
from fleet.core.events import event_record
from fleet.core.links import public_link, public_link_rebased
from fleet.monitoring.models import NotificationDelivery
from fleet.monitoring.services import (
    alert_rule_evaluate,
    event_notice_send,
    notification_deliver,
    notification_target_create,
)
from tests.fleet.monitoring.conftest import WebhookReceiver, at, offline_rule, set_offline

PUBLIC = "https://fleet.example.net"
FORGED_HOST = "evil.example"
LINK_RE = re.compile(r"https?://[^\s\"'<>]+")

pytestmark = pytest.mark.django_db


@pytest.fixture
def public_url(settings: Any) -> str:
    settings.OTB_PUBLIC_URL = PUBLIC
    settings.OTB = {**settings.OTB, "WEBHOOK_ALLOW_PRIVATE": True}
    return PUBLIC


def links_in(text: Any) -> list[str]:
    return LINK_RE.findall(str(text))


def test_every_link_the_service_sends_starts_with_the_public_url(
    public_url: str, people: Any, box_factory: Any, django_capture_on_commit_callbacks: Any
) -> None:
    sent: dict[str, list[str]] = {}
    owner = APIClient(HTTP_HOST=FORGED_HOST)
    owner.force_login(people.owner)

    # an invitation email, caused by a request with a forged Host
    mail.outbox.clear()
    with django_capture_on_commit_callbacks(execute=True):
        response = owner.post(
            f"/api/v1/organizations/{people.org.pk}/invitations/",
            {"email": "new@example.com", "role": "viewer"},
            format="json",
        )
    assert response.status_code == 201, response.content
    sent["invitation email"] = links_in(mail.outbox[-1].body)

    # a password-reset email, asked for with a forged Host
    reset = Client(HTTP_HOST=FORGED_HOST).post("/accounts/password-reset/", {"email": "viewer@example.com"})
    assert reset.status_code == 302
    sent["password reset email"] = links_in(mail.outbox[-1].body)

    # an alert, by email and by webhook
    box = box_factory(organization=people.org)
    email_target, _ = notification_target_create(
        actor=Actor.for_user(people.admin),
        organization=people.org,
        name="NOC",
        kind="email",
        email="noc@x.io",
    )
    receiver = WebhookReceiver()
    try:
        hook, _ = notification_target_create(
            actor=Actor.for_user(people.admin),
            organization=people.org,
            name="Hook",
            kind="webhook",
            url=receiver.url,
        )
        rule = offline_rule(people, [email_target, hook])
        set_offline(box, since=at(0))
        alert_rule_evaluate(rule_id=rule.pk, now=at(6))
        for delivery in NotificationDelivery.objects.all():
            notification_deliver(delivery_id=delivery.pk)
    finally:
        receiver.close()
    sent["alert email"] = links_in(mail.outbox[-1].body)
    (webhook,) = receiver.requests
    sent["webhook payload"] = links_in(webhook["body"].decode())

    # the API's page links: a limit/offset list and a cursor timeline
    box_factory(organization=people.org)
    listing = owner.get("/api/v1/boxes/", {"limit": 1, "offset": 1}).json()
    sent["list page links"] = [link for link in (listing["next"], listing["previous"]) if link]
    for kind in ("box_online", "box_offline"):
        event_record(box_id=box.pk, kind=kind, organization_id=people.org.pk)
    timeline = owner.get(f"/api/v1/boxes/{box.pk}/events/", {"limit": 1}).json()
    sent["timeline page link"] = [timeline["next"]]

    # the schema's server
    schema = owner.get("/api/schema/", HTTP_ACCEPT="application/json").json()
    sent["schema server"] = [server["url"] for server in schema.get("servers", [])]

    # then each source sent at least one link, and every one is on the public address
    strays = {source: link for source, links in sent.items() for link in links if not link.startswith(PUBLIC)}
    assert strays == {}
    assert all(sent.values()), sent
    assert FORGED_HOST not in json.dumps(sent)
    assert json.loads(webhook["body"])["box"]["url"] == f"{PUBLIC}/boxes/{box.pk}/"


def test_a_box_event_notice_links_the_box_page_on_the_public_address(
    public_url: str, people: Any, box_factory: Any
) -> None:
    # given a box whose public address changed, in an organisation without targets (owners get it)
    box = box_factory(organization=people.org)
    event = event_record(
        box_id=box.pk,
        kind="public_ip_changed",
        organization_id=people.org.pk,
        data={"old_public_ipv4": "198.51.100.7", "new_public_ipv4": "198.51.100.9"},
    )
    mail.outbox.clear()
    # when its notice is sent
    for delivery_id in event_notice_send(event_id=event.pk):
        notification_deliver(delivery_id=delivery_id)
    # then the email names the box page on the public address
    assert mail.outbox, "no notice email"
    assert all(links_in(message.body) == [f"{PUBLIC}/boxes/{box.pk}/"] for message in mail.outbox)


def test_a_request_built_link_keeps_its_path_and_query_on_the_public_address(public_url: str) -> None:
    assert public_link_rebased("http://10.0.0.5:8000/api/v1/boxes/?limit=1&offset=2") == (
        f"{PUBLIC}/api/v1/boxes/?limit=1&offset=2"
    )
    assert public_link("/boxes/") == f"{PUBLIC}/boxes/"
    with pytest.raises(ValueError, match="absolute path"):
        public_link("boxes/")
