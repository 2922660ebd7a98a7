"""Alert rules, notification targets, alerts and deliveries over REST: roles, validation, scoping;
the box and organisation timelines: newest first, cursor pages, filters, a fixed query count."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from fleet.core.audit import Actor
from fleet.core.events import events_record_batch
from fleet.core.models import AuditLog
from fleet.monitoring.models import AlertRule, NotificationDelivery, NotificationTarget
from fleet.monitoring.services import alert_rule_create, alert_rule_evaluate, notification_target_create
from fleet.telemetry.models import BoxStatus

pytestmark = pytest.mark.django_db


def rules_url(org: Any) -> str:
    return f"/api/v1/organizations/{org.pk}/alert-rules/"


def targets_url(org: Any) -> str:
    return f"/api/v1/organizations/{org.pk}/notification-targets/"


def test_webhook_target_secret_is_returned_once(people: Any, client_for: Any) -> None:
    # given an admin
    client = client_for(people.admin)
    # when they create a webhook target
    response = client.post(
        targets_url(people.org),
        {"name": "Ops hook", "kind": "webhook", "url": "https://hooks.example.com/x"},
        format="json",
    )
    # then the secret is in the creation answer only, and stored encrypted
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["secret"].startswith("whsec_")
    stored = NotificationTarget.objects.get(pk=body["id"])
    assert body["secret"] not in stored.secret_ciphertext
    assert "secret" not in client.get(f"{targets_url(people.org)}{body['id']}/").json()
    assert all("secret" not in item for item in client.get(targets_url(people.org)).json()["results"])
    rotated = client.patch(f"{targets_url(people.org)}{body['id']}/", {"rotate_secret": True}, format="json")
    assert rotated.json()["secret"].startswith("whsec_") and rotated.json()["secret"] != body["secret"]
    assert AuditLog.objects.filter(action="notification_target.create").count() == 1


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "x", "kind": "webhook", "url": "ftp://example.com/"}, "url"),
        ({"name": "x", "kind": "webhook", "url": "https://user:pw@example.com/"}, "url"),
        ({"name": "x", "kind": "webhook"}, "url"),
        ({"name": "x", "kind": "email", "email": "not-an-address"}, "email"),
        ({"name": "x", "kind": "sms", "email": "a@example.com"}, "kind"),
        ({"kind": "email", "email": "a@example.com"}, "name"),
    ],
)
def test_bad_targets_are_400_naming_the_field(people: Any, client_for: Any, body: dict, field: str) -> None:
    response = client_for(people.admin).post(targets_url(people.org), body, format="json")
    assert response.status_code == 400, response.content
    assert field in response.json()["error"]["fields"]
    assert not NotificationTarget.objects.exists()


def test_rule_crud_by_role(people: Any, client_for: Any, box_factory: Any) -> None:
    target, _ = notification_target_create(
        actor=Actor.system("test"), organization=people.org, name="NOC", kind="email", email="noc@example.com"
    )
    box = box_factory(organization=people.org)
    body = {
        "name": "Lossy links",
        "kind": "loss_above",
        "threshold": 5,
        "duration_minutes": 10,
        "box": str(box.pk),
        "targets": [str(target.pk)],
    }
    # a viewer cannot create, an admin can
    assert client_for(people.viewer).post(rules_url(people.org), body, format="json").status_code == 403
    created = client_for(people.admin).post(rules_url(people.org), body, format="json")
    assert created.status_code == 201, created.content
    rule = created.json()
    assert rule["threshold"] == 5.0 and rule["targets"] == [str(target.pk)] and rule["box"] == str(box.pk)
    # the viewer reads it
    listed = client_for(people.viewer).get(rules_url(people.org)).json()["results"]
    assert [item["id"] for item in listed] == [rule["id"]]
    # the owner changes it, then deletes it
    url = f"{rules_url(people.org)}{rule['id']}/"
    assert client_for(people.viewer).patch(url, {"enabled": False}, format="json").status_code == 403
    changed = client_for(people.owner).patch(url, {"enabled": False, "duration_minutes": 3}, format="json")
    assert changed.status_code == 200 and changed.json()["enabled"] is False
    assert changed.json()["duration_minutes"] == 3
    assert client_for(people.owner).delete(url).status_code == 204
    assert not AlertRule.objects.exists()


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "r", "kind": "loss_above", "duration_minutes": 5}, "threshold"),
        ({"name": "r", "kind": "loss_above", "threshold": 101}, "threshold"),
        ({"name": "r", "kind": "rtt_above", "threshold": -1}, "threshold"),
        ({"name": "r", "kind": "box_offline", "duration_minutes": 0}, "duration_minutes"),
        ({"name": "r", "kind": "box_offline", "duration_minutes": 2000}, "duration_minutes"),
        ({"name": "r", "kind": "cpu_above"}, "kind"),
        (
            {"name": "r", "kind": "box_offline", "targets": ["00000000-0000-0000-0000-000000000000"]},
            "targets",
        ),
        ({"name": "r", "kind": "box_offline", "box": "00000000-0000-0000-0000-000000000000"}, "box"),
    ],
)
def test_bad_rules_are_400_naming_the_field(people: Any, client_for: Any, body: dict, field: str) -> None:
    response = client_for(people.admin).post(rules_url(people.org), body, format="json")
    assert response.status_code == 400, response.content
    assert field in response.json()["error"]["fields"]
    assert not AlertRule.objects.exists()


def test_other_organisations_objects_are_not_found(people: Any, client_for: Any, box_factory: Any) -> None:
    # given a rule and a target in the other organisation, and a box there
    target, _ = notification_target_create(
        actor=Actor.system("test"),
        organization=people.other_org,
        name="T",
        kind="email",
        email="t@example.com",
    )
    rule = alert_rule_create(
        actor=Actor.system("test"), organization=people.other_org, name="R", kind="box_offline"
    )
    foreign_box = box_factory(organization=people.other_org)
    client = client_for(people.admin)
    # then everything about it is 404 to our admin, even by id under our own organisation
    assert client.get(rules_url(people.other_org)).status_code == 404
    assert client.get(targets_url(people.other_org)).status_code == 404
    assert client.get(f"/api/v1/organizations/{people.other_org.pk}/alerts/").status_code == 404
    assert client.get(f"{rules_url(people.org)}{rule.pk}/").status_code == 404
    assert client.delete(f"{targets_url(people.org)}{target.pk}/").status_code == 404
    # and a foreign target or box cannot be attached to our rule
    sneaky = client.post(
        rules_url(people.org),
        {"name": "x", "kind": "box_offline", "targets": [str(target.pk)]},
        format="json",
    )
    assert sneaky.status_code == 400
    sneaky_box = client.post(
        rules_url(people.org), {"name": "x", "kind": "box_offline", "box": str(foreign_box.pk)}, format="json"
    )
    assert sneaky_box.status_code == 400


def _fire(people: Any, box_factory: Any, count: int) -> Any:
    target, _ = notification_target_create(
        actor=Actor.system("test"),
        organization=people.org,
        name=f"T{count}",
        kind="email",
        email="t@example.com",
    )
    rule = alert_rule_create(
        actor=Actor.system("test"),
        organization=people.org,
        name=f"R{count}",
        kind="box_offline",
        duration_minutes=1,
        target_ids=[target.pk],
    )
    for _ in range(count):
        box = box_factory(organization=people.org)
        BoxStatus.objects.create(box=box, online=False, offline_since=timezone.now() - timedelta(minutes=10))
    alert_rule_evaluate(rule_id=rule.pk)
    return rule


def test_alerts_and_deliveries_lists_with_fixed_query_counts(
    people: Any, client_for: Any, box_factory: Any
) -> None:
    client = client_for(people.viewer)
    alerts_url = f"/api/v1/organizations/{people.org.pk}/alerts/"
    # given one firing alert
    _fire(people, box_factory, 1)
    client.get(alerts_url)
    with CaptureQueriesContext(connection) as few_alerts:
        assert len(client.get(alerts_url + "?state=firing").json()["results"]) == 1
    with CaptureQueriesContext(connection) as few_deliveries:
        assert len(client.get("/api/v1/notification-deliveries/").json()["results"]) == 1
    # when there are many more
    _fire(people, box_factory, 12)
    with CaptureQueriesContext(connection) as many_alerts:
        alerts = client.get(alerts_url + "?state=firing").json()["results"]
    with CaptureQueriesContext(connection) as many_deliveries:
        listed = client.get("/api/v1/notification-deliveries/").json()["results"]
    # then the same number of queries
    # (the second rule covers every box of the organisation: 13 alerts, plus the first one)
    assert len(alerts) == 14 and len(listed) == 14
    assert len(many_alerts) == len(few_alerts)
    assert len(many_deliveries) == len(few_deliveries)
    assert client.get(alerts_url + "?state=resolved").json()["results"] == []
    # filtering deliveries by alert
    alert_id = alerts[0]["id"]
    by_alert = client.get(f"/api/v1/notification-deliveries/?alert={alert_id}").json()["results"]
    assert [item["alert"] for item in by_alert] == [alert_id]
    # and the outsider sees none of them
    assert client_for(people.outsider).get("/api/v1/notification-deliveries/").json()["results"] == []
    assert NotificationDelivery.objects.count() == 14


def _seed(box: Any, count: int, kind: str = "wan_up") -> None:
    base = timezone.now() - timedelta(hours=1)
    events_record_batch(
        [
            {"box_id": box.pk, "kind": kind, "ts": base + timedelta(seconds=i), "data": {"i": i}}
            for i in range(count)
        ]
    )


def test_box_timeline_is_newest_first_and_pages_with_a_cursor(people: Any, box: Any, client_for: Any) -> None:
    # given 7 events on the box
    _seed(box, 7)
    client = client_for(people.viewer)
    # when the viewer reads them 3 at a time
    first = client.get(f"/api/v1/boxes/{box.pk}/events/?limit=3").json()
    second = client.get(first["next"]).json()
    third = client.get(second["next"]).json()
    # then they come newest first, without gaps or repeats
    seen = [item["data"]["i"] for page in (first, second, third) for item in page["results"]]
    assert seen == [6, 5, 4, 3, 2, 1, 0]
    assert third["next"] is None


def test_timeline_filters(people: Any, box: Any, client_for: Any) -> None:
    _seed(box, 3, kind="wan_up")
    _seed(box, 2, kind="wan_down")
    client = client_for(people.viewer)
    down = client.get(f"/api/v1/boxes/{box.pk}/events/?kind=wan_down").json()["results"]
    assert {item["kind"] for item in down} == {"wan_down"} and len(down) == 2
    future = (timezone.now() + timedelta(minutes=1)).isoformat().replace("+00:00", "Z")
    assert client.get(f"/api/v1/boxes/{box.pk}/events/", {"from": future}).json()["results"] == []
    bad = client.get(f"/api/v1/boxes/{box.pk}/events/?kind=nope")
    assert bad.status_code == 400 and "kind" in bad.json()["error"]["fields"]
    bad_date = client.get(f"/api/v1/boxes/{box.pk}/events/?from=yesterday")
    assert bad_date.status_code == 400 and "from" in bad_date.json()["error"]["fields"]


def test_organisation_timeline_and_scoping(people: Any, box: Any, box_factory: Any, client_for: Any) -> None:
    other_box = box_factory(organization=people.other_org)
    _seed(box, 2)
    _seed(other_box, 3)
    mine = client_for(people.viewer).get(f"/api/v1/organizations/{people.org.pk}/events/").json()["results"]
    assert {item["box"] for item in mine} == {str(box.pk)}
    outsider = client_for(people.outsider)
    assert outsider.get(f"/api/v1/boxes/{box.pk}/events/").status_code == 404
    assert outsider.get(f"/api/v1/organizations/{people.org.pk}/events/").status_code == 404
    staff = client_for(people.staff).get(f"/api/v1/organizations/{people.other_org.pk}/events/").json()
    assert len(staff["results"]) == 3


def test_timeline_query_count_is_fixed(people: Any, box: Any, client_for: Any) -> None:
    # given a client and a short timeline
    client = client_for(people.viewer)
    _seed(box, 2)
    client.get(f"/api/v1/boxes/{box.pk}/events/")
    with CaptureQueriesContext(connection) as few:
        client.get(f"/api/v1/boxes/{box.pk}/events/")
    # when the timeline grows well past a page
    _seed(box, 120)
    with CaptureQueriesContext(connection) as many:
        body = client.get(f"/api/v1/boxes/{box.pk}/events/").json()
    # then a page costs the same queries
    assert len(body["results"]) == 50
    assert len(many) == len(few)
