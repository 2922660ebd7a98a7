"""The config poll's 304 fast path (provisioning/checkin.py) through the real ASGI application."""

from __future__ import annotations

from typing import Any

import pytest
from channels.testing import HttpCommunicator
from django.utils import timezone

from config.asgi import application
from fleet.core.models import AgentCredential, Box

pytestmark = pytest.mark.django_db(transaction=True)


async def poll(token: str | None, if_none_match: str | None) -> dict[str, Any]:
    headers = []
    if token:
        headers.append((b"authorization", f"Bearer {token}".encode()))
    if if_none_match:
        headers.append((b"if-none-match", if_none_match.encode()))
    communicator = HttpCommunicator(application, "GET", "/api/v1/agent/config", headers=headers)
    return await communicator.get_response(timeout=10)


def header(response: dict[str, Any], name: bytes) -> str | None:
    return next((value.decode() for key, value in response["headers"] if key.lower() == name), None)


@pytest.fixture(autouse=True)
async def _pool_closed() -> Any:
    yield
    await application.application_mapping["http"].close()


@pytest.fixture
def polled_box(box_factory: Any, agent_token_factory: Any) -> tuple[Box, str]:
    box = box_factory(config_hash="a" * 64)
    return box, agent_token_factory(box)


async def test_unchanged_config_is_answered_304_without_django(polled_box: tuple[Box, str]) -> None:
    # given a box whose desired config hash is known to it
    box, token = polled_box
    # when it polls with that hash, then the answer is 304 with the ETag and a request id,
    # answered before Django's middleware (which would add X-Frame-Options to any response)
    response = await poll(token, f'"{box.config_hash}"')
    assert response["status"] == 304
    assert header(response, b"etag") == f'"{box.config_hash}"'
    assert header(response, b"x-request-id")
    assert response["body"] == b""
    assert header(response, b"x-frame-options") is None


async def test_changed_config_goes_to_django(polled_box: tuple[Box, str]) -> None:
    # given a box polling with an old hash, then Django answers (not a 304)
    _box, token = polled_box
    response = await poll(token, '"' + "b" * 64 + '"')
    assert response["status"] == 200
    assert header(response, b"x-frame-options") == "DENY"


@pytest.mark.parametrize("case", ["revoked", "decommissioned", "wrong_token", "no_token"])
async def test_no_304_for_invalid_callers(polled_box: tuple[Box, str], case: str) -> None:
    # given a token that is not (or no longer) valid
    token: str | None
    box, token = polled_box
    from asgiref.sync import sync_to_async

    if case == "revoked":
        await sync_to_async(AgentCredential.objects.filter(box=box).update)(revoked_at=timezone.now())
    elif case == "decommissioned":
        await sync_to_async(Box.objects.filter(pk=box.pk).update)(decommissioned_at=timezone.now())
    elif case == "wrong_token":
        token = token[:-4] + "AAAA"
    else:
        token = None
    # when it polls with the right hash, then the fast path steps aside and Django refuses it
    response = await poll(token, f'"{box.config_hash}"')
    assert response["status"] == 401
