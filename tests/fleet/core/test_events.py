"""The event timeline: recording, broadcasting to people after commit, and the paginated API."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from channels.layers import DEFAULT_CHANNEL_LAYER, channel_layers
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from fleet.core.doorbells import box_group, organization_group
from fleet.core.errors import InvalidInput
from fleet.core.events import event_record, events_record_batch
from fleet.core.models import Event
from fleet.monitoring.services.retention import events_prune

pytestmark = pytest.mark.django_db


@pytest.fixture
def box(people: Any, box_factory: Any) -> Any:
    return box_factory(organization=people.org)


def test_event_record_fills_the_organisation(people: Any, box: Any) -> None:
    # given a claimed box
    # when an event is recorded without an organisation
    event = event_record(box_id=box.pk, kind="wan_down", data={"iface": "wan1"})
    # then it carries the box's organisation and a timestamp
    event.refresh_from_db()
    assert event.organization_id == people.org.pk
    assert event.data == {"iface": "wan1"}
    assert abs((timezone.now() - event.ts).total_seconds()) < 5


def test_batch_is_all_or_nothing(box: Any) -> None:
    with pytest.raises(InvalidInput) as raised:
        events_record_batch(
            [
                {"box_id": box.pk, "kind": "box_online", "data": {}},
                {"box_id": box.pk, "kind": "exploded", "data": {}},
            ]
        )
    assert raised.value.field == "kind"
    assert not Event.objects.exists()
    created = events_record_batch(
        [{"box_id": box.pk, "kind": "box_online", "data": {}}, {"box_id": box.pk, "kind": "box_offline"}]
    )
    assert len(created) == 2 and Event.objects.count() == 2


@pytest.mark.django_db(transaction=True)
def test_events_are_broadcast_to_box_and_organisation_after_commit(people: Any, box: Any) -> None:
    # given channels in the box group and the organisation group
    # A layer of the test's own: the shared one keeps per-loop receive locks from earlier tests'
    # event loops, and async_to_sync runs each call on a new loop.
    layer = channel_layers.make_backend(DEFAULT_CHANNEL_LAYER)
    box_channel = async_to_sync(layer.new_channel)()
    org_channel = async_to_sync(layer.new_channel)()
    async_to_sync(layer.group_add)(box_group(box.pk), box_channel)
    async_to_sync(layer.group_add)(organization_group(people.org.pk), org_channel)
    try:
        # when an event is recorded
        event = event_record(box_id=box.pk, kind="firmware_changed", data={"from": "1.0", "to": "1.1"})
        # then both groups get a people.event carrying it
        for channel in (box_channel, org_channel):
            message = async_to_sync(layer.receive)(channel)
            assert message["type"] == "people.event"
            assert message["payload"]["kind"] == "event"
            assert message["payload"]["event"]["id"] == str(event.pk)
            assert message["payload"]["event"]["data"]["to"] == "1.1"
    finally:
        async_to_sync(layer.group_discard)(box_group(box.pk), box_channel)
        async_to_sync(layer.group_discard)(organization_group(people.org.pk), org_channel)


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


def test_events_older_than_the_retention_are_pruned_in_batches(box: Any, settings: Any) -> None:
    # given 30 days of retention and 7 events over 40 days
    settings.OTB = {**settings.OTB, "EVENT_RETENTION_DAYS": 30}
    now = timezone.now()
    ages = [40, 35, 31, 30.5, 29, 5, 0]
    Event.objects.bulk_create(
        [Event(box=box, kind="box_online", ts=now - timedelta(days=age), data={}) for age in ages]
    )
    # when the prune runs with batches of 2
    deleted = events_prune(now=now, batch_size=2)
    # then exactly the 4 older than 30 days are gone, the rest kept
    assert deleted == 4
    kept = sorted(
        round((now - ts).total_seconds() / 86400, 1) for ts in Event.objects.values_list("ts", flat=True)
    )
    assert kept == [0.0, 5.0, 29.0]
    # and a second run finds nothing
    assert events_prune(now=now, batch_size=2) == 0


def test_the_prune_stops_after_max_batches_and_the_next_run_goes_on(box: Any, settings: Any) -> None:
    settings.OTB = {**settings.OTB, "EVENT_RETENTION_DAYS": 1}
    old = timezone.now() - timedelta(days=10)
    Event.objects.bulk_create([Event(box=box, kind="box_online", ts=old, data={}) for _ in range(5)])
    assert events_prune(batch_size=2, max_batches=1) == 2
    assert events_prune(batch_size=2, max_batches=10) == 3
    assert not Event.objects.exists()
