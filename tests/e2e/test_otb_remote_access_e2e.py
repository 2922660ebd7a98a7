"""A stock OverTheBox box's remote access over real HTTP (uvicorn with a bastion configured): the owner
approves a request, the box polls ``remoteAccessPrepare``, posts its host key with curl as its script
does (``jq -n -c`` body through ``otb_device_post``), polls ``remoteAccessConnect`` with the bastion's
details, and ``remoteAccessDisconnect`` once closed; another box's JWT cannot post the key."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.test.utils import override_settings
from django.utils import timezone

from fleet.commands.choices import CommandKind
from fleet.commands.models import Command, RemoteAccess
from fleet.commands.remote_access import remote_access_approve, remote_access_close, remote_access_request
from fleet.core.audit import Actor
from fleet.core.choices import BoxProtocol
from otbcompat.models import OtbDevice
from otbcompat.services import device_subscribe
from tests.e2e.browser import LiveServer, asgi_server_start, asgi_server_stop

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(
        not (shutil.which("curl") and shutil.which("jq")), reason="curl and jq act like the box"
    ),
]

BASTION_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIK1bastionbastionbastionbastion bastion"
BOX_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB3wZKXwz0Tz0ZbYc0m9VdJ3l8rG0m0RrC2fYcP7b9zx root@OpenWrt"
SUPPORT_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGq0rXbDzJbYcbkP3z1c6G1K2u7tXcWQ3yDlrRfCwB4u support"
ENV = {
    "OTB_REMOTE_ACCESS_BASTION_HOST": "bastion.example.net",
    "OTB_REMOTE_ACCESS_BASTION_HOST_KEY": BASTION_KEY,
}

# The box's otb_device_post with the body its prepare script builds; prints the status last.
POLL = r"""
curl --silent --show-error --max-time 5 -H "Content-Type: application/json" -H "X-Overthebox-Version: 1.1.3" \
    -H "Authorization: Bearer $JWT" "$OTB_BASE/1.0/devices/$DEVICE_ID/actions/todo"
"""
POST_KEY = r"""
body=$(jq -n -c --arg pubkey "$BOX_KEY" '{public_key: $pubkey}')
curl --silent --show-error --max-time 5 -X POST -H "Content-Type: application/json" \
    -H "X-Overthebox-Version: 1.1.3" -H "Authorization: Bearer $JWT" --data "$body" \
    -w '\n%{http_code}' "$OTB_BASE/1.0/devices/$DEVICE_ID/remote_accesses/$RA_ID/keys"
"""


@pytest.fixture
def bastion_server(tmp_path: Path) -> Iterator[LiveServer]:
    server = asgi_server_start(tmp_path / "uvicorn.log", ENV)
    yield server
    asgi_server_stop(server)


def post_key(server: LiveServer, jwt: str, device_id: str, access_id: str) -> tuple[int, Any]:
    done = subprocess.run(
        ["bash", "-c", POST_KEY],
        env={
            "PATH": "/usr/bin:/bin",
            "OTB_BASE": server.url,
            "JWT": jwt,
            "DEVICE_ID": device_id,
            "RA_ID": access_id,
            "BOX_KEY": BOX_KEY,
        },
        capture_output=True,
        text=True,
        timeout=20,
        check=True,
    )
    text, _, status = done.stdout.rpartition("\n")
    return int(status), json.loads(text)


def poll(server: LiveServer, jwt: str, device_id: str) -> dict[str, Any]:
    done = subprocess.run(
        ["bash", "-c", POLL],
        env={"PATH": "/usr/bin:/bin", "OTB_BASE": server.url, "JWT": jwt, "DEVICE_ID": device_id},
        capture_output=True,
        text=True,
        timeout=20,
        check=True,
    )
    return dict(json.loads(done.stdout))


def test_the_box_posts_its_key_and_is_told_to_connect(
    bastion_server: LiveServer, box_factory: Any, people: Any
) -> None:
    # given an owner's approval of a request for a stock box
    box = box_factory(organization=people.org, protocol=BoxProtocol.OTB)
    mine = device_subscribe({"macaddr": "00:0d:b9:4a:33:01", "board": "apu2"}, source_ip="192.0.2.51")
    now = timezone.now()
    OtbDevice.objects.filter(id=mine.device.id).update(box=box, linked_at=now, confirmed_at=now)
    bastion = {
        "REMOTE_ACCESS_BASTION_HOST": "bastion.example.net",
        "REMOTE_ACCESS_BASTION_HOST_KEY": BASTION_KEY,
    }
    with override_settings(OTB={**settings.OTB, **bastion}):
        access = remote_access_request(
            actor=Actor.for_user(people.admin),
            box=box,
            exposed_port=22,
            public_key=SUPPORT_KEY,
            duration_s=600,
        )
        remote_access_approve(actor=Actor.for_user(people.owner), access=access)

    # when the box polls, it is asked to prepare
    device_id = str(mine.device.id)
    todo = poll(bastion_server, mine.jwt, device_id)
    assert (todo["action"], todo["arguments"]) == (
        "remoteAccessPrepare",
        {"remote_access_id": str(access.pk)},
    )

    # and another box tries to post its key for it, then the box itself
    theirs = device_subscribe({"macaddr": "00:0d:b9:4a:33:02", "board": "apu2"}, source_ip="192.0.2.52")
    status, answer = post_key(bastion_server, theirs.jwt, str(mine.device.id), str(access.pk))
    assert status == 403 and answer["class"] == "Client::Forbidden"
    status, answer = post_key(bastion_server, mine.jwt, str(mine.device.id), str(access.pk))

    # then the key is kept and the box gets the connect action's command with the bastion's details
    assert (status, answer) == (200, {})
    access.refresh_from_db()
    assert (access.state, access.device_public_key) == ("connected", BOX_KEY)
    connect = Command.objects.get(box=box, kind=CommandKind.REMOTE_ACCESS_CONNECT)
    assert (
        connect.params["ip"] == "bastion.example.net" and connect.params["server_public_key"] == BASTION_KEY
    )
    assert connect.params["port"] == access.bastion_port and connect.params["forwarded_port"] == 22
    assert RemoteAccess.objects.count() == 1
    todo = poll(bastion_server, mine.jwt, device_id)
    assert todo["action"] == "remoteAccessConnect" and todo["arguments"] == connect.params

    # and once the owner closes it, the box is told to disconnect
    remote_access_close(actor=Actor.for_user(people.owner), access=access)
    todo = poll(bastion_server, mine.jwt, device_id)
    assert (todo["action"], todo["arguments"]) == (
        "remoteAccessDisconnect",
        {"remote_access_id": str(access.pk)},
    )
