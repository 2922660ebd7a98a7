"""A stock OverTheBox box's identity calls against a real uvicorn server, made with curl exactly as the
box's ``otb_call`` makes them (lib/overthebox in ovh/overthebox-feeds v1.1.x): ``--max-time 5``, every
call with ``Content-Type: application/json`` and ``X-Overthebox-Version``, the Bearer only when a JWT is
stored, pretty-printed bodies, and no redirect followed (no ``-L``)."""

from __future__ import annotations

import shutil
from typing import Any

import pytest

from otbcompat.models import OtbDevice
from otbcompat.services import token_digest
from tests.e2e.otbbox import box_subscribe, otb_call

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is needed to call like the box")
def test_subscribe_poll_expire_renew_over_real_http(asgi_server: Any) -> None:
    base = asgi_server.url
    answer = box_subscribe(base, "00:0d:b9:4a:11:22")
    device = OtbDevice.objects.get(id=answer["device_id"])
    assert device.token_hash == token_digest(answer["token"])

    todo = f"devices/{answer['device_id']}/actions/todo"
    status, action = otb_call(base, "GET", todo, jwt=answer["jwt"])
    assert status == 200 and action["action"] == "wait", action

    # a JWT the server no longer accepts: 401 with the class the box acts on (it then renews)
    status, error = otb_call(base, "GET", todo, jwt=answer["jwt"][:-3] + "AAA")
    assert status == 401 and error["class"] == "Client::Unauthorized", error

    # renew_jwt with the old Bearer still attached, as the box sends it
    status, renewed = otb_call(
        base, "POST", "renew_jwt", {"id": answer["device_id"], "token": answer["token"]}, jwt="stale.jwt.here"
    )
    assert status == 200 and renewed["jwt"], renewed
    status, action = otb_call(base, "GET", todo, jwt=renewed["jwt"])
    assert status == 200 and action["action"] == "wait"

    # a trailing slash is not redirected to (the box follows no redirect): the exact path is the route
    status, _ = otb_call(base, "POST", "subscribe/", {"board": "x", "macaddr": "00:0d:b9:4a:11:23"})
    assert status == 404
