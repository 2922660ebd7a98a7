"""A notification delivered through ``.delay()`` by a real Celery worker process: the webhook answers
500 once, the task retries with backoff, then succeeds; every attempt is recorded and signed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.db import connection
from django.utils import timezone

from config.celery import app as celery_app
from fleet.core.audit import Actor
from fleet.monitoring.models import NotificationDelivery
from fleet.monitoring.services import alert_rule_create, alert_rule_evaluate, notification_target_create
from fleet.monitoring.webhooks import webhook_signature_valid
from fleet.telemetry.models import BoxStatus
from provisioning.services.lifecycle import box_reassign_server
from tests.fleet.monitoring.conftest import WebhookReceiver

pytestmark = pytest.mark.django_db(transaction=True)

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture
def celery_worker(tmp_path: Path) -> Iterator[Path]:
    """A real worker on this test's Redis and test database (solo pool), stopped afterwards."""
    db = connection.settings_dict
    database_url = f"postgresql://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}"
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "REDIS_URL": settings.REDIS_URL,
        "OTB_ENV": "test",
        "OTB_NOTIFY_RETRY_BASE_S": "1",
        "OTB_WEBHOOK_ALLOW_PRIVATE": "1",
        "OTB_PROCESS_NAME": "otb-test-worker",
    }
    env.pop("OTB_TEST_DB_NAME", None)
    celery_app.control.purge()  # stale messages of earlier runs would only slow the worker down
    log = tmp_path / "worker.log"
    with log.open("w") as output:
        process = subprocess.Popen(
            [
                str(Path(sys.executable).with_name("celery")),
                "-A",
                "config",
                "worker",
                "-Q",
                "default,telemetry,rollouts",
                "--pool",
                "solo",
                "--without-gossip",
                "--without-mingle",
                "-l",
                "info",
            ],
            cwd=ROOT,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        yield log
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def test_webhook_delivery_retries_through_a_real_worker(
    people: Any, box_factory: Any, celery_worker: Path
) -> None:
    # given a webhook target that answers 500 once, then 200, and a box offline for 10 minutes
    receiver = WebhookReceiver(statuses=[500])
    try:
        target, secret = notification_target_create(
            actor=Actor.for_user(people.admin),
            organization=people.org,
            name="Hook",
            kind="webhook",
            url=receiver.url,
        )
        assert secret is not None
        rule = alert_rule_create(
            actor=Actor.for_user(people.admin),
            organization=people.org,
            name="Offline",
            kind="box_offline",
            duration_minutes=5,
            target_ids=[target.pk],
        )
        box = box_factory(organization=people.org)
        BoxStatus.objects.create(box=box, online=False, offline_since=timezone.now() - timedelta(minutes=10))
        # when the rule is evaluated (the delivery task is queued with .delay() after commit)
        summary = alert_rule_evaluate(rule_id=rule.pk)
        assert summary.fired == 1 and len(summary.deliveries) == 1
        delivery = NotificationDelivery.objects.get()
        # then the worker sends it, is refused once, retries and succeeds
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            delivery.refresh_from_db()
            if delivery.state != "pending":
                break
            time.sleep(0.5)
        assert delivery.state == "sent", celery_worker.read_text()[-3000:]
        assert delivery.attempts == 2
        assert delivery.response_status == 200 and delivery.last_error == ""
        assert len(receiver.requests) == 2
        for request in receiver.requests:
            headers = {key.lower(): value for key, value in request["headers"].items()}
            assert webhook_signature_valid(secret, request["body"], headers["x-otb-signature"])
            assert headers["x-otb-event"] == "alert.firing"
    finally:
        receiver.close()


def test_a_reassignment_notice_reaches_the_customer_through_a_real_worker(
    people: Any, claimed_box_factory: Any, provisioned_region_factory: Any, celery_worker: Path
) -> None:
    # given a customer's box, its webhook target, and a server in another region
    receiver = WebhookReceiver()
    try:
        _, secret = notification_target_create(
            actor=Actor.for_user(people.admin),
            organization=people.org,
            name="Hook",
            kind="webhook",
            url=receiver.url,
        )
        assert secret is not None
        box = claimed_box_factory(people.org)
        east = provisioned_region_factory(
            "us-east", public="198.51.100.0/26", tunnel="100.65.0.0/24", ipv6="2001:db8:100::/44"
        )
        # when staff reassign it (the notice task is queued by name after the commit)
        box_reassign_server(actor=Actor.for_user(people.staff), box=box, server=east.server)
        # then the worker creates the notice's delivery and sends it, signed
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and not receiver.requests:
            time.sleep(0.5)
        assert len(receiver.requests) == 1, celery_worker.read_text()[-3000:]
        request = receiver.requests[0]
        headers = {key.lower(): value for key, value in request["headers"].items()}
        assert webhook_signature_valid(secret, request["body"], headers["x-otb-signature"])
        assert headers["x-otb-event"] == "box.public_ip_changed"
        data = json.loads(request["body"])["notice"]["data"]
        assert (data["old_public_ipv4"], data["new_public_ipv4"]) == ("203.0.113.1", "198.51.100.1")
        assert NotificationDelivery.objects.get(box_event__box=box).state in ("pending", "sent")
    finally:
        receiver.close()
