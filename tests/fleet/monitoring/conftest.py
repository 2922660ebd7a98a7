"""Fixtures and helpers of the monitoring tests: a clock one day back (``at``), a local webhook
receiver, an email target, an offline rule, a box set offline."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from django.utils import timezone

from fleet.core.audit import Actor
from fleet.monitoring.services import alert_rule_create, notification_target_create
from fleet.telemetry.models import BoxStatus

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
