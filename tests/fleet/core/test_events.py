"""The event timeline's recording (fleet.core.events): the organisation filled in, a batch all or
nothing, broadcast to people after commit."""

from __future__ import annotations

from typing import Any

import pytest
from asgiref.sync import async_to_sync
from channels.layers import DEFAULT_CHANNEL_LAYER, channel_layers
from django.utils import timezone

from fleet.core.doorbells import box_group, organization_group
from fleet.core.errors import InvalidInput
from fleet.core.events import event_record, events_record_batch
from fleet.core.models import Event

pytestmark = pytest.mark.django_db


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
