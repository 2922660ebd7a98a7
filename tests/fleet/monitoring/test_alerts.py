"""Alert evaluation (debounce, one notification per firing, recovery, flapping limit) and the delivery
of notifications by email and by signed webhook to a real local HTTP receiver."""

from __future__ import annotations

import itertools
import json
import threading
from collections.abc import Iterator
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from django.core import mail
from django.utils import timezone

from fleet.core.audit import Actor
from fleet.core.errors import InvalidInput
from fleet.core.models import Event
from fleet.monitoring.models import Alert, NotificationDelivery
from fleet.monitoring.services import (
    MAX_ATTEMPTS,
    alert_rule_create,
    alert_rule_evaluate,
    notification_deliver,
    notification_target_create,
)
from fleet.monitoring.webhooks import webhook_signature_valid
from fleet.telemetry.models import BoxStatus, WanStatus

pytestmark = pytest.mark.django_db

T0 = timezone.now().replace(microsecond=0) - timedelta(days=1)


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


class WebhookReceiver:
    """A local HTTP endpoint recording requests; answers with the queued statuses, then 200."""

    def __init__(self, statuses: list[int] | None = None) -> None:
        self.statuses = list(statuses or [])
        self.requests: list[dict[str, Any]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.requests.append({"headers": dict(self.headers), "body": body})
                status = receiver.statuses.pop(0) if receiver.statuses else 200
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    instance = WebhookReceiver()
    yield instance
    instance.close()


@pytest.fixture
def box(people: Any, box_factory: Any) -> Any:
    return box_factory(organization=people.org)


@pytest.fixture
def email_target(people: Any) -> Any:
    target, secret = notification_target_create(
        actor=Actor.for_user(people.admin),
        organization=people.org,
        name="NOC",
        kind="email",
        email="noc@example.com",
    )
    assert secret is None
    return target


def offline_rule(people: Any, targets: list[Any], minutes: int = 5) -> Any:
    return alert_rule_create(
        actor=Actor.for_user(people.admin),
        organization=people.org,
        name="Box offline",
        kind="box_offline",
        duration_minutes=minutes,
        target_ids=[target.pk for target in targets],
    )


def set_offline(box: Any, since: datetime) -> None:
    BoxStatus.objects.update_or_create(box=box, defaults={"online": False, "offline_since": since})


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


def test_resolved_alerts_past_the_retention_go_with_their_deliveries(
    people: Any, box_factory: Any, settings: Any, email_target: Any
) -> None:
    from fleet.monitoring.services.retention import events_prune

    # given 30 days of history, an alert resolved 40 days ago with a delivery, one resolved yesterday
    # and one still firing since long ago
    settings.OTB = {**settings.OTB, "EVENT_RETENTION_DAYS": 30}
    target = email_target
    rule = offline_rule(people, [target])
    now = timezone.now()

    def alert(box: Any, state: str, resolved_days_ago: float | None) -> Alert:
        resolved_at = now - timedelta(days=resolved_days_ago) if resolved_days_ago is not None else None
        return Alert.objects.create(
            rule=rule,
            organization=people.org,
            box=box,
            state=state,
            started_at=now - timedelta(days=60),
            resolved_at=resolved_at,
        )

    old = alert(box_factory(organization=people.org), "resolved", 40)
    NotificationDelivery.objects.create(alert=old, target=target, event="resolved")
    recent = alert(box_factory(organization=people.org), "resolved", 1)
    firing = alert(box_factory(organization=people.org), "firing", None)
    # when the history is pruned
    assert events_prune(now=now) == 1
    # then only the old resolved alert and its delivery are gone
    assert set(Alert.objects.values_list("pk", flat=True)) == {recent.pk, firing.pk}
    assert not NotificationDelivery.objects.filter(alert_id=old.pk).exists()


class FakeResolver:
    """``socket.getaddrinfo`` answering chosen names from a queue of answers (the last one repeats)
    and every other name from the real resolver (Redis and the test server keep working)."""

    def __init__(self, answers: dict[str, list[list[str]]]) -> None:
        import socket

        self.real = socket.getaddrinfo
        self.answers = answers
        self.calls: dict[str, int] = {}

    def __call__(self, host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        import socket

        if host not in self.answers:
            return self.real(host, port, *args, **kwargs)
        queue = self.answers[host]
        self.calls[host] = self.calls.get(host, 0) + 1
        addresses = queue.pop(0) if len(queue) > 1 else queue[0]
        return [
            (
                socket.AF_INET6 if ":" in a else socket.AF_INET,
                socket.SOCK_STREAM,
                6,
                "",
                (a, int(port)) if ":" not in a else (a, int(port), 0, 0),
            )
            for a in addresses
        ]


def test_webhook_connects_to_the_address_it_checked_not_a_rebound_one(
    receiver: WebhookReceiver, monkeypatch: Any, settings: Any
) -> None:
    import socket

    from fleet.monitoring import webhooks

    settings.OTB = {**settings.OTB, "WEBHOOK_ALLOW_PRIVATE": False}
    monkeypatch.setattr(webhooks, "TIMEOUT_S", 1)
    # given a name that first resolves to a public address, then (a rebinding DNS) to our receiver
    port = receiver.server.server_address[1]
    resolver = FakeResolver({"hooks.rebind.test": [["93.184.216.34"], ["127.0.0.1"]]})
    monkeypatch.setattr(socket, "getaddrinfo", resolver)
    # when a webhook is posted to it
    response = webhooks.webhook_post(
        url=f"http://hooks.rebind.test:{port}/hook", secret="s", event="test", body=b"{}", timestamp=1
    )
    # then the name was resolved once, and the private address never received the POST
    assert resolver.calls == {"hooks.rebind.test": 1}
    assert receiver.requests == []
    assert response.status is None and response.error


def test_webhook_to_a_name_posts_to_its_address_with_the_name_as_host(
    receiver: WebhookReceiver, monkeypatch: Any
) -> None:
    import socket

    from fleet.monitoring.webhooks import webhook_post

    port = receiver.server.server_address[1]
    resolver = FakeResolver({"hooks.local.test": [["127.0.0.1"]]})
    monkeypatch.setattr(socket, "getaddrinfo", resolver)
    response = webhook_post(
        url=f"http://hooks.local.test:{port}/hook?x=1", secret="s", event="test", body=b"{}", timestamp=1
    )
    assert response.status == 200 and response.error == "", response
    (request,) = receiver.requests
    assert request["headers"]["Host"] == f"hooks.local.test:{port}"


def test_webhook_to_a_name_with_any_private_address_is_refused(
    receiver: WebhookReceiver, monkeypatch: Any, settings: Any
) -> None:
    import socket

    from fleet.monitoring.webhooks import webhook_post, webhook_url_validate

    settings.OTB = {**settings.OTB, "WEBHOOK_ALLOW_PRIVATE": False}
    port = receiver.server.server_address[1]
    resolver = FakeResolver({"hooks.example.com": [["93.184.216.34", "127.0.0.1"]]})
    monkeypatch.setattr(socket, "getaddrinfo", resolver)
    response = webhook_post(
        url=f"http://hooks.example.com:{port}/hook", secret="s", event="test", body=b"{}", timestamp=1
    )
    assert response.status is None and response.error == "destination address is not public"
    assert receiver.requests == []
    # an address literal or a local name is refused when the target is saved, naming the field
    for url in (receiver.url, "http://[::1]/hook", "http://localhost:8080/x", "http://10.1.2.3/x"):
        with pytest.raises(InvalidInput) as caught:
            webhook_url_validate(url)
        assert caught.value.field == "url"
    assert webhook_url_validate("https://hooks.example.com/otb") == "https://hooks.example.com/otb"


def test_webhook_to_an_unresolvable_name_is_a_recorded_error_not_a_crash(monkeypatch: Any) -> None:
    import socket

    from fleet.monitoring.webhooks import webhook_post

    real = socket.getaddrinfo

    def resolver(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host == "no-such-host.invalid":
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", resolver)
    response = webhook_post(
        url="http://no-such-host.invalid/hook", secret="s", event="test", body=b"{}", timestamp=1
    )
    assert response.status is None and "cannot resolve no-such-host.invalid" in response.error
