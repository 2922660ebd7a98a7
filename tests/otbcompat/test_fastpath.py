"""The idle poll of stock OverTheBox boxes answered on the event loop (otbcompat/fastpath.py), through
the real ASGI application: what it answers itself, and every case it leaves to Django."""

from __future__ import annotations

import os
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from channels.testing import HttpCommunicator
from django.test import Client
from django.utils import timezone

from config.asgi import application
from fleet.commands.choices import CommandKind
from fleet.commands.services import command_create
from fleet.core.audit import Actor
from fleet.core.models import Box
from otbcompat.models import OtbDevice
from otbcompat.presence import redis_client, seen_key
from otbcompat.services import jwts_revoke
from tests.otbcompat.test_actions import device_for

pytestmark = pytest.mark.django_db(transaction=True)


async def poll(
    device: dict[str, Any], *, jwt: str | None = None, path_id: str | None = None
) -> dict[str, Any]:
    headers = [
        (b"content-type", b"application/json"),
        (b"x-overthebox-version", b"1.1.3"),
        (b"authorization", f"Bearer {jwt or device['jwt']}".encode()),
    ]
    path = f"/1.0/devices/{path_id or device['device_id']}/actions/todo"
    return await HttpCommunicator(application, "GET", path, headers=headers).get_response(timeout=10)


def header(response: dict[str, Any], name: bytes) -> str | None:
    return next((value.decode() for key, value in response["headers"] if key.lower() == name), None)


def answered_by_django(response: dict[str, Any]) -> bool:
    # Django's middleware adds X-Frame-Options to every response; the fast path does not
    return header(response, b"x-frame-options") is not None


@pytest.fixture(autouse=True)
async def _pools_closed() -> Any:
    yield
    await application.application_mapping["http"].close()


@pytest.fixture
def linked(people: Any, claimed_box_factory: Any) -> tuple[Box, dict[str, Any]]:
    box = claimed_box_factory(people.org)
    return box, device_for(Client(), box)


async def test_an_idle_poll_is_answered_without_django_and_noted_for_presence(
    linked: tuple[Box, dict[str, Any]],
) -> None:
    box, device = linked
    response = await poll(device)
    assert response["status"] == 200 and not answered_by_django(response)
    assert response["body"] == b'{"id": null, "action": "wait", "arguments": {"delay": 10}}'
    await application.application_mapping["http"].presence_write()
    noted = await sync_to_async(redis_client().hget)(seen_key(), device["device_id"])
    assert noted is not None and noted.decode().endswith(f"|{box.pk}|1.1.3")


async def test_a_pending_device_is_idle_too() -> None:
    device = await sync_to_async(device_for)(Client(), None)
    response = await poll(device)
    assert response["status"] == 200 and not answered_by_django(response)


async def test_a_pending_command_goes_to_django(linked: tuple[Box, dict[str, Any]]) -> None:
    box, device = linked
    command = await sync_to_async(command_create)(
        actor=Actor.system("test"), box=box, kind=CommandKind.REBOOT
    )
    response = await poll(device)
    assert answered_by_django(response)
    assert b'"action": "reboot"' in response["body"] and str(command.id).encode() in response["body"]


@pytest.mark.parametrize("case", ["unconfirmed", "config_changed"])
async def test_derived_actions_go_to_django(linked: tuple[Box, dict[str, Any]], case: str) -> None:
    box, device = linked
    if case == "unconfirmed":
        await sync_to_async(OtbDevice.objects.filter(id=device["device_id"]).update)(confirmed_at=None)
        expected = b"askServiceConfirmation"
    else:
        await sync_to_async(Box.objects.filter(pk=box.pk).update)(applied_config_hash="older")
        expected = b"configure"
    response = await poll(device)
    assert answered_by_django(response) and expected in response["body"]


@pytest.mark.parametrize("case", ["revoked_device", "revoked_jwts", "bad_signature", "other_device"])
async def test_callers_that_are_not_in_order_get_djangos_answer(
    linked: tuple[Box, dict[str, Any]], case: str
) -> None:
    _box, device = linked
    jwt, path_id, status, error_class = None, None, 401, "Client::Unauthorized"
    if case == "revoked_device":
        await sync_to_async(OtbDevice.objects.filter(id=device["device_id"]).update)(
            revoked_at=timezone.now()
        )
        status = 403
    elif case == "revoked_jwts":
        await sync_to_async(jwts_revoke)(await sync_to_async(OtbDevice.objects.get)(id=device["device_id"]))
    elif case == "bad_signature":
        jwt = device["jwt"][:-3] + "AAA"
    else:
        other = await sync_to_async(device_for)(Client(), None)
        path_id, status, error_class = other["device_id"], 403, "Client::Forbidden"
    response = await poll(device, jwt=jwt, path_id=path_id)
    assert answered_by_django(response)
    assert response["status"] == status and error_class.encode() in response["body"]


async def test_a_database_that_does_not_answer_paces_signed_boxes(
    linked: tuple[Box, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    from psycopg_pool import PoolTimeout

    from otbcompat.fastpath import OtbTodoFastPath

    _box, device = linked

    async def saturated(self: Any) -> None:
        raise PoolTimeout("couldn't get a connection after 2.00 sec")

    monkeypatch.setattr(OtbTodoFastPath, "_ensure_loop_state", saturated)
    # a box we signed is told to wait (Django would fail too, and an error makes it poll every second)
    response = await poll(device)
    assert response["status"] == 200 and not answered_by_django(response)
    assert b'"action": "wait"' in response["body"]
    # a JWT we did not sign still gets Django's 401
    response = await poll(device, jwt=device["jwt"][:-3] + "AAA")
    assert answered_by_django(response) and response["status"] == 401


def fast_path() -> Any:
    return application.application_mapping["http"]


async def until(condition: Any, timeout_s: float = 5.0) -> float:
    """Wait for ``condition()`` to hold; returns the seconds it took (fails the test after timeout)."""
    import asyncio
    import time

    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < timeout_s, "condition not met in time"
        await asyncio.sleep(0.01)
    return time.monotonic() - started


class BrokenPool:
    """Stands for the database in a cache hit: any use of it fails the poll's expectation."""

    def connection(self, **_kwargs: Any) -> Any:
        raise AssertionError("the idle cache should have answered without the database")

    async def close(self) -> None:
        return None


async def idle_and_cached(device: dict[str, Any]) -> None:
    response = await poll(device)
    assert response["status"] == 200 and not answered_by_django(response)
    await until(lambda: fast_path().listening)
    response = await poll(device)  # the listener is up: this answer is kept
    assert not answered_by_django(response)
    assert device["device_id"] in fast_path()._idle_for


async def test_an_idle_answer_is_kept_in_memory_and_answers_without_the_database(
    linked: tuple[Box, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    box, device = linked
    await idle_and_cached(device)
    monkeypatch.setattr(fast_path(), "_pool", BrokenPool())
    response = await poll(device)
    assert response["status"] == 200 and not answered_by_django(response)
    assert b'"action": "wait"' in response["body"]
    await fast_path().presence_write()  # still noted for presence
    noted = await sync_to_async(redis_client().hget)(seen_key(), device["device_id"])
    assert noted is not None and noted.decode().endswith(f"|{box.pk}|1.1.3")
    # another JWT for the same device is checked again (the cache is for the token it was given)
    response = await poll(device, jwt=device["jwt"][:-3] + "AAA")
    assert answered_by_django(response) and response["status"] == 401


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ("command", b'"action": "reboot"'),
        ("config_changed", b"configure"),
        ("unconfirmed", b"askServiceConfirmation"),
        ("revoked_device", b"this device is unknown or revoked"),
        ("revoked_jwts", b"Client::Unauthorized"),
    ],
)
async def test_a_kept_idle_answer_is_forgotten_at_once_when_something_becomes_due(
    linked: tuple[Box, dict[str, Any]], change: str, expected: bytes
) -> None:
    box, device = linked
    await idle_and_cached(device)
    if change == "command":
        await sync_to_async(command_create)(actor=Actor.system("test"), box=box, kind=CommandKind.REBOOT)
    elif change == "config_changed":
        await sync_to_async(Box.objects.filter(pk=box.pk).update)(config_hash="newer")
    elif change == "unconfirmed":
        await sync_to_async(OtbDevice.objects.filter(id=device["device_id"]).update)(confirmed_at=None)
    elif change == "revoked_device":
        await sync_to_async(OtbDevice.objects.filter(id=device["device_id"]).update)(
            revoked_at=timezone.now()
        )
    else:
        await sync_to_async(jwts_revoke)(await sync_to_async(OtbDevice.objects.get)(id=device["device_id"]))
    # by the notification, within milliseconds (bounds for a loaded CI machine); the TTL is 300 s
    took = await until(lambda: device["device_id"] not in fast_path()._idle_for, timeout_s=5.0)
    assert took < 3.0
    response = await poll(device)
    assert answered_by_django(response) and expected in response["body"]


async def test_losing_the_listener_turns_the_idle_cache_off_until_it_is_back(
    linked: tuple[Box, dict[str, Any]],
) -> None:
    from django.db import connection

    box, device = linked
    await idle_and_cached(device)

    def terminate_listener() -> int:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE application_name LIKE %s AND datname = current_database()",
                [f"%-otb-todo-listen:{os.getpid()}"],  # this process's (an e2e server may share the db)
            )
            return int(cursor.fetchone()[0])

    assert await sync_to_async(terminate_listener)() == 1
    await until(lambda: not fast_path().listening)
    assert fast_path()._idle_for == {}
    # a change while nobody listens is still seen: the poll asks the database
    await sync_to_async(command_create)(actor=Actor.system("test"), box=box, kind=CommandKind.REBOOT)
    response = await poll(device)
    assert answered_by_django(response) and b'"action": "reboot"' in response["body"]
    await until(lambda: fast_path().listening)  # it reconnects by itself


async def test_closing_leaves_no_connection_behind(linked: tuple[Box, dict[str, Any]]) -> None:
    from django.db import connection

    _box, device = linked
    await idle_and_cached(device)
    await fast_path().close()

    def ours() -> int:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE %s"
                " AND datname = current_database()",
                [f"%-otb-todo%:{os.getpid()}"],
            )
            return int(cursor.fetchone()[0])

    await until(lambda: True)
    assert await sync_to_async(ours)() == 0
