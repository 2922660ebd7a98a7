"""The portal's live websocket against the real ASGI application, session auth and Redis channel layer."""

from __future__ import annotations

import json
from typing import Any

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.test import Client

from config.asgi import application
from fleet.core.doorbells import abroadcast_to_people
from fleet.core.events import event_record
from fleet.live.people import MAX_SUBSCRIPTIONS

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.asyncio]


def session_headers(user: Any) -> list[tuple[bytes, bytes]]:
    headers = [(b"origin", b"http://testserver"), (b"host", b"testserver")]
    if user is not None:
        client = Client()
        client.force_login(user)
        headers.append((b"cookie", f"sessionid={client.cookies['sessionid'].value}".encode()))
    return headers


async def connect(user: Any) -> WebsocketCommunicator:
    headers = await database_sync_to_async(session_headers)(user)
    communicator = WebsocketCommunicator(application, "/ws/live/", headers=headers)
    connected, _ = await communicator.connect()
    assert connected
    return communicator


async def receive(communicator: WebsocketCommunicator) -> dict[str, Any]:
    return json.loads(await communicator.receive_from(timeout=5))


async def test_anonymous_is_closed_with_4001(people: Any) -> None:
    # given no session
    communicator = await connect(None)
    try:
        # then an error frame and close code 4001
        assert (await receive(communicator))["code"] == "not_authenticated"
        closed = await communicator.receive_output(timeout=5)
        assert closed == {"type": "websocket.close", "code": 4001}
    finally:
        await communicator.disconnect()


async def test_subscriber_to_own_box_receives_its_events(people: Any, box_factory: Any) -> None:
    # given a viewer subscribed to a box of their organisation
    box = await database_sync_to_async(box_factory)(organization=people.org)
    communicator = await connect(people.viewer)
    try:
        assert (await receive(communicator))["type"] == "ready"
        await communicator.send_json_to({"type": "subscribe", "box": str(box.pk)})
        assert await receive(communicator) == {"type": "subscribed", "box": str(box.pk)}
        # when an event is recorded for the box (committed, then broadcast)
        event = await database_sync_to_async(event_record)(
            box_id=box.pk, kind="wan_down", data={"iface": "wan2"}
        )
        # then it arrives on the socket
        frame = await receive(communicator)
        assert frame["kind"] == "event" and frame["event"]["id"] == str(event.pk)
        assert frame["event"]["data"] == {"iface": "wan2"}
        # and after unsubscribing nothing more arrives
        await communicator.send_json_to({"type": "unsubscribe", "box": str(box.pk)})
        assert (await receive(communicator))["type"] == "unsubscribed"
        await abroadcast_to_people(box.pk, None, {"kind": "presence", "online": True})
        assert await communicator.receive_nothing(timeout=0.5)
    finally:
        await communicator.disconnect()


async def test_organisation_subscription_receives_telemetry_and_presence(
    people: Any, box_factory: Any
) -> None:
    box = await database_sync_to_async(box_factory)(organization=people.org)
    communicator = await connect(people.owner)
    try:
        await receive(communicator)
        await communicator.send_json_to({"type": "subscribe", "organization": str(people.org.pk)})
        assert (await receive(communicator))["type"] == "subscribed"
        await abroadcast_to_people(
            box.pk, people.org.pk, {"kind": "presence", "box_id": str(box.pk), "online": True}
        )
        assert (await receive(communicator))["kind"] == "presence"
    finally:
        await communicator.disconnect()


async def test_another_organisations_box_is_not_found_and_receives_nothing(
    people: Any, box_factory: Any
) -> None:
    # given a box of another organisation
    foreign = await database_sync_to_async(box_factory)(organization=people.other_org)
    communicator = await connect(people.viewer)
    try:
        await receive(communicator)
        # when the viewer tries to subscribe to it (and to that organisation)
        await communicator.send_json_to({"type": "subscribe", "box": str(foreign.pk)})
        box_error = await receive(communicator)
        await communicator.send_json_to({"type": "subscribe", "organization": str(people.other_org.pk)})
        org_error = await receive(communicator)
        # then both are "not found", and its events never reach this socket
        assert (
            box_error["type"] == "error" and box_error["code"] == "not_found" and box_error["field"] == "box"
        )
        assert org_error["code"] == "not_found" and org_error["field"] == "organization"
        await database_sync_to_async(event_record)(box_id=foreign.pk, kind="box_offline", data={})
        assert await communicator.receive_nothing(timeout=0.5)
    finally:
        await communicator.disconnect()


async def test_staff_may_watch_any_box(people: Any, box_factory: Any) -> None:
    foreign = await database_sync_to_async(box_factory)(organization=people.other_org)
    communicator = await connect(people.staff)
    try:
        await receive(communicator)
        await communicator.send_json_to({"type": "subscribe", "box": str(foreign.pk)})
        assert (await receive(communicator))["type"] == "subscribed"
    finally:
        await communicator.disconnect()


async def test_bad_frames_and_the_subscription_limit(people: Any, box_factory: Any, monkeypatch: Any) -> None:
    monkeypatch.setattr("fleet.live.people.MAX_SUBSCRIPTIONS", 2)
    boxes = [await database_sync_to_async(box_factory)(organization=people.org) for _ in range(3)]
    communicator = await connect(people.viewer)
    try:
        await receive(communicator)
        await communicator.send_to(text_data="not json")
        assert (await receive(communicator))["code"] == "invalid"
        await communicator.send_json_to({"type": "subscribe", "box": "nope"})
        assert (await receive(communicator))["field"] == "box"
        await communicator.send_json_to({"type": "dance"})
        assert (await receive(communicator))["field"] == "type"
        for box in boxes[:2]:
            await communicator.send_json_to({"type": "subscribe", "box": str(box.pk)})
            assert (await receive(communicator))["type"] == "subscribed"
        await communicator.send_json_to({"type": "subscribe", "box": str(boxes[2].pk)})
        assert (await receive(communicator))["code"] == "too_many_subscriptions"
    finally:
        await communicator.disconnect()
    assert MAX_SUBSCRIPTIONS == 50


async def test_a_removed_member_stops_receiving_at_once(people: Any, box_factory: Any) -> None:
    # given a viewer watching a box and the whole organisation
    box = await database_sync_to_async(box_factory)(organization=people.org)
    communicator = await connect(people.viewer)
    try:
        assert (await receive(communicator))["type"] == "ready"
        await communicator.send_json_to({"type": "subscribe", "box": str(box.pk)})
        assert (await receive(communicator))["type"] == "subscribed"
        await communicator.send_json_to({"type": "subscribe", "organization": str(people.org.pk)})
        assert (await receive(communicator))["type"] == "subscribed"

        # when an owner removes them from the organisation
        def remove() -> None:
            from fleet.core.audit import Actor
            from fleet.core.models import Membership
            from fleet.core.services import member_remove

            membership = Membership.objects.get(user=people.viewer, organization=people.org)
            member_remove(actor=Actor.for_user(people.owner), membership=membership)

        await database_sync_to_async(remove)()
        # then both subscriptions are dropped, saying why
        dropped = [await receive(communicator), await receive(communicator)]
        assert {frame["type"] for frame in dropped} == {"unsubscribed"}
        assert {frame["reason"] for frame in dropped} == {"access_revoked"}
        # and the box's events no longer reach the socket
        await abroadcast_to_people(box.pk, people.org.pk, {"kind": "presence", "online": True})
        assert await communicator.receive_nothing(timeout=0.5)
    finally:
        await communicator.disconnect()


async def test_a_signed_out_session_is_closed_at_the_next_recheck(
    people: Any, box_factory: Any, monkeypatch: Any
) -> None:
    import fleet.live.people as portal

    monkeypatch.setattr(portal, "REAUTHORIZE_INTERVAL_S", 0.0)
    box = await database_sync_to_async(box_factory)(organization=people.org)
    communicator = await connect(people.viewer)
    try:
        assert (await receive(communicator))["type"] == "ready"
        await communicator.send_json_to({"type": "subscribe", "box": str(box.pk)})
        assert (await receive(communicator))["type"] == "subscribed"

        # when the person's sessions are deleted (signed out everywhere)
        def sign_out() -> None:
            from django.contrib.sessions.models import Session

            Session.objects.all().delete()

        await database_sync_to_async(sign_out)()
        # then the next event closes the socket with 4001 instead of being forwarded
        await abroadcast_to_people(box.pk, None, {"kind": "presence", "online": True})
        assert (await receive(communicator))["code"] == "not_authenticated"
        closed = await communicator.receive_output(timeout=5)
        assert closed == {"type": "websocket.close", "code": 4001}
    finally:
        await communicator.disconnect()
