"""Remote access to a stock OverTheBox box: asked by an admin, approved by an owner only, the box's key
through /1.0, then connect; closing and expiry disconnect it; every step audited; nothing across
organisations or boxes."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest
from django.conf import settings
from django.test import Client
from django.test.utils import override_settings
from django.utils import timezone

from fleet.commands.choices import CommandKind, RemoteAccessState
from fleet.commands.models import Command, RemoteAccess
from fleet.commands.remote_access import remote_accesses_expire
from fleet.core.choices import BoxProtocol
from fleet.core.models import AuditLog
from otbcompat.models import OtbDevice
from otbcompat.services import device_subscribe

pytestmark = pytest.mark.django_db

SUPPORT_KEY = (
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGq0rXbDzJbYcbkP3z1c6G1K2u7tXcWQ3yDlrRfCwB4u support@example"
)
BOX_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB3wZKXwz0Tz0ZbYc0m9VdJ3l8rG0m0RrC2fYcP7b9zx root@otb"
BASTION_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIK1bastionbastionbastionbastion"
BASTION: dict[str, Any] = {
    **settings.OTB,
    "REMOTE_ACCESS_BASTION_HOST": "bastion.example.net",
    "REMOTE_ACCESS_BASTION_HOST_KEY": BASTION_KEY,
    "REMOTE_ACCESS_PORT_MIN": 20000,
    "REMOTE_ACCESS_PORT_MAX": 20001,
}


@pytest.fixture
def otb_box(box_factory: Any, people: Any) -> Any:
    box = box_factory(organization=people.org, protocol=BoxProtocol.OTB)
    subscription = device_subscribe({"macaddr": "00:0d:b9:4a:22:01", "board": "apu2"}, source_ip="192.0.2.41")
    OtbDevice.objects.filter(id=subscription.device.id).update(box=box, linked_at=timezone.now())
    box.jwt = subscription.jwt
    box.device_id = str(subscription.device.id)
    return box


def ask(client: Any, box: Any, **body: Any) -> Any:
    payload = {"exposed_port": 22, "public_key": SUPPORT_KEY, "duration_s": 3600, **body}
    return client.post(f"/api/v1/boxes/{box.pk}/remote-accesses/", payload, format="json")


def post_key(box: Any, access_id: str, key: Any = BOX_KEY, jwt: str | None = None) -> Any:
    return Client().generic(
        "POST",
        f"/1.0/devices/{box.device_id}/remote_accesses/{access_id}/keys",
        json.dumps({"public_key": key}, indent=2),
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {jwt or box.jwt}",
    )


@override_settings(OTB=BASTION)
def test_request_approve_key_connect_close(otb_box: Any, people: Any, client_for: Any) -> None:
    admin, owner = client_for(people.admin), client_for(people.owner)
    # an admin asks; it waits for the owner
    asked = ask(admin, otb_box)
    assert asked.status_code == 201, asked.content
    access_id = asked.json()["id"]
    assert asked.json()["state"] == "requested" and asked.json()["expires_at"] is None
    # the admin cannot approve it, staff cannot either: only an owner consents
    assert admin.post(f"/api/v1/boxes/{otb_box.pk}/remote-accesses/{access_id}/approve").status_code == 403
    staff = client_for(people.staff).post(f"/api/v1/boxes/{otb_box.pk}/remote-accesses/{access_id}/approve")
    assert staff.status_code == 403
    # before approval the box's key is refused
    assert post_key(otb_box, access_id).status_code == 400
    approved = owner.post(f"/api/v1/boxes/{otb_box.pk}/remote-accesses/{access_id}/approve")
    assert approved.status_code == 200, approved.content
    body = approved.json()
    assert body["state"] == "approved" and body["bastion_port"] == 20000 and body["expires_at"]
    prepare = Command.objects.get(kind=CommandKind.REMOTE_ACCESS_PREPARE)
    assert prepare.params == {"remote_access_id": access_id}
    # the box sends its host key: it is told to connect, with the bastion and both keys
    sent = post_key(otb_box, access_id)
    assert sent.status_code == 200 and sent.json() == {}
    connect = Command.objects.get(kind=CommandKind.REMOTE_ACCESS_CONNECT)
    assert connect.params == {
        "remote_access_id": access_id,
        "ip": "bastion.example.net",
        "port": 20000,
        "forwarded_port": 22,
        "server_public_key": BASTION_KEY + " otb-bastion",
        "remote_public_key": SUPPORT_KEY,
    }
    access = RemoteAccess.objects.get(pk=access_id)
    assert (access.state, access.device_public_key) == (RemoteAccessState.CONNECTED, BOX_KEY)
    # closing it tells the box to disconnect
    closed = admin.post(f"/api/v1/boxes/{otb_box.pk}/remote-accesses/{access_id}/close")
    assert closed.status_code == 200 and closed.json()["state"] == "closed"
    disconnect = Command.objects.get(kind=CommandKind.REMOTE_ACCESS_DISCONNECT)
    assert disconnect.params == {"remote_access_id": access_id}
    assert post_key(otb_box, access_id).status_code == 400  # over
    actions = set(AuditLog.objects.filter(box_id=otb_box.pk).values_list("action", flat=True))
    assert {
        "remote_access.request",
        "remote_access.approve",
        "remote_access.device_key",
        "remote_access.close",
    } <= actions


@override_settings(OTB=BASTION)
def test_expiry_disconnects_and_frees_the_bastion_port(otb_box: Any, people: Any, client_for: Any) -> None:
    owner = client_for(people.owner)
    first = ask(owner, otb_box).json()["id"]
    second = ask(owner, otb_box).json()["id"]
    third = ask(owner, otb_box).json()["id"]
    for access_id in (first, second):
        assert (
            owner.post(f"/api/v1/boxes/{otb_box.pk}/remote-accesses/{access_id}/approve").status_code == 200
        )
    # both bastion ports are taken: the third waits
    full = owner.post(f"/api/v1/boxes/{otb_box.pk}/remote-accesses/{third}/approve")
    assert full.status_code == 409 and RemoteAccess.objects.get(pk=third).state == "requested"
    # the first runs out of time
    RemoteAccess.objects.filter(pk=first).update(expires_at=timezone.now() - timedelta(seconds=1))
    assert remote_accesses_expire() == 1
    assert RemoteAccess.objects.get(pk=first).state == "expired"
    assert Command.objects.filter(
        kind=CommandKind.REMOTE_ACCESS_DISCONNECT, params={"remote_access_id": first}
    ).exists()
    assert AuditLog.objects.filter(action="remote_access.expire").count() == 1
    assert remote_accesses_expire() == 0  # done once
    # its port is free again
    approved = owner.post(f"/api/v1/boxes/{otb_box.pk}/remote-accesses/{third}/approve")
    assert approved.status_code == 200 and approved.json()["bastion_port"] == 20000


@override_settings(OTB=BASTION)
def test_no_access_across_organisations_or_boxes(
    otb_box: Any, people: Any, client_for: Any, box_factory: Any
) -> None:
    owner = client_for(people.owner)
    access_id = ask(owner, otb_box).json()["id"]
    owner.post(f"/api/v1/boxes/{otb_box.pk}/remote-accesses/{access_id}/approve")
    outsider = client_for(people.outsider)
    assert ask(outsider, otb_box).status_code == 404
    for action in ("approve", "close"):
        url = f"/api/v1/boxes/{otb_box.pk}/remote-accesses/{access_id}/{action}"
        assert outsider.post(url).status_code == 404
    assert outsider.get(f"/api/v1/boxes/{otb_box.pk}/remote-accesses/").status_code == 404
    # a viewer may look but not ask
    viewer = client_for(people.viewer)
    assert viewer.get(f"/api/v1/boxes/{otb_box.pk}/remote-accesses/").status_code == 200
    assert ask(viewer, otb_box).status_code == 403
    # another box cannot post its key for this session
    other = box_factory(organization=people.other_org, protocol=BoxProtocol.OTB)
    theirs = device_subscribe({"macaddr": "00:0d:b9:4a:22:02", "board": "apu2"}, source_ip="192.0.2.42")
    OtbDevice.objects.filter(id=theirs.device.id).update(box=other, linked_at=timezone.now())
    stolen = Client().generic(
        "POST",
        f"/1.0/devices/{theirs.device.id}/remote_accesses/{access_id}/keys",
        json.dumps({"public_key": BOX_KEY}),
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {theirs.jwt}",
    )
    assert stolen.status_code == 404 and stolen.json()["class"] == "Client::NotFound"
    assert post_key(otb_box, access_id, jwt=theirs.jwt).status_code == 403  # not its device id
    assert RemoteAccess.objects.get(pk=access_id).device_public_key == ""
    # remote access commands cannot be sent by hand
    by_hand = owner.post(
        f"/api/v1/boxes/{otb_box.pk}/commands/",
        {"kind": "remote_access_connect", "params": {"remote_access_id": access_id}},
        format="json",
    )
    assert by_hand.status_code == 400 and "kind" in by_hand.json()["error"]["fields"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"exposed_port": 0}, "exposed_port"),
        ({"exposed_port": "22"}, "exposed_port"),
        ({"public_key": "ssh-ed25519 AAAA' ; reboot"}, "public_key"),
        ({"public_key": SUPPORT_KEY + "\nssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQ"}, "public_key"),
        ({"duration_s": 10}, "duration_s"),
        ({"duration_s": 99 * 24 * 3600}, "duration_s"),
    ],
)
def test_bad_requests_name_the_field_and_write_nothing(
    otb_box: Any, people: Any, client_for: Any, body: dict[str, Any], field: str
) -> None:
    response = ask(client_for(people.admin), otb_box, **body)
    assert response.status_code == 400 and field in response.json()["error"]["fields"], response.content
    assert (
        not RemoteAccess.objects.exists()
        and not AuditLog.objects.filter(action__startswith="remote").exists()
    )


def test_agent_boxes_and_an_unset_bastion_are_refused(
    otb_box: Any, people: Any, client_for: Any, box_factory: Any
) -> None:
    agent_box = box_factory(organization=people.org)
    refused = ask(client_for(people.admin), agent_box)
    assert refused.status_code == 400 and "box" in refused.json()["error"]["fields"]
    access_id = ask(client_for(people.admin), otb_box).json()["id"]
    unset = client_for(people.owner).post(f"/api/v1/boxes/{otb_box.pk}/remote-accesses/{access_id}/approve")
    assert unset.status_code == 409 and "OTB_REMOTE_ACCESS_BASTION_HOST" in unset.json()["error"]["message"]
    assert RemoteAccess.objects.get(pk=access_id).state == "requested"


@override_settings(OTB=BASTION)
def test_bad_device_keys_are_400_naming_the_field(otb_box: Any, people: Any, client_for: Any) -> None:
    owner = client_for(people.owner)
    access_id = ask(owner, otb_box).json()["id"]
    owner.post(f"/api/v1/boxes/{otb_box.pk}/remote-accesses/{access_id}/approve")
    for key in (None, "", "not a key", BOX_KEY + "'"):
        response = post_key(otb_box, access_id, key=key)
        assert response.status_code == 400 and response.json()["message"].startswith("public_key:"), key
    unknown = post_key(otb_box, "00000000-0000-0000-0000-000000000000")
    assert unknown.status_code == 404 and unknown.json()["class"] == "Client::NotFound"
    assert not Command.objects.filter(kind=CommandKind.REMOTE_ACCESS_CONNECT).exists()


@override_settings(OTB=BASTION)
def test_the_bastion_lists_open_sessions_staff_only(otb_box: Any, people: Any, client_for: Any) -> None:
    owner = client_for(people.owner)
    open_id = ask(owner, otb_box).json()["id"]
    owner.post(f"/api/v1/boxes/{otb_box.pk}/remote-accesses/{open_id}/approve")
    post_key(otb_box, open_id)
    waiting = ask(owner, otb_box).json()["id"]
    listed = client_for(people.staff).get("/api/v1/remote-accesses/open")
    assert listed.status_code == 200
    assert [
        (item["id"], item["bastion_port"], item["device_public_key"]) for item in listed.json()["results"]
    ] == [(open_id, 20000, BOX_KEY)]
    assert waiting not in str(listed.json())
    # an owner of the organisation is not the bastion
    assert owner.get("/api/v1/remote-accesses/open").status_code == 403
