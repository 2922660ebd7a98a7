"""Remote access on the box page of a stock OverTheBox box: an admin asks, only an owner approves (after
ticking the confirmation), and the box page shows the session; agent boxes have no such section."""

from __future__ import annotations

from typing import Any

import pytest
from django.conf import settings
from django.test import Client
from django.test.utils import override_settings

from fleet.commands.choices import CommandKind
from fleet.commands.models import Command, RemoteAccess
from fleet.core.choices import BoxProtocol

pytestmark = pytest.mark.django_db

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGq0rXbDzJbYcbkP3z1c6G1K2u7tXcWQ3yDlrRfCwB4u support"
BASTION = {
    **settings.OTB,
    "REMOTE_ACCESS_BASTION_HOST": "bastion.example.net",
    "REMOTE_ACCESS_BASTION_HOST_KEY": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIK1bastionbastionbastionbastion b",
}


def logged_in(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


@override_settings(OTB=BASTION)
def test_admin_asks_owner_approves_after_confirming(box_factory: Any, people: Any) -> None:
    box = box_factory(organization=people.org, protocol=BoxProtocol.OTB)
    admin, owner = logged_in(people.admin), logged_in(people.owner)
    assert 'id="remote-access"' in admin.get(f"/boxes/{box.pk}/").content.decode()
    # a bad key is said and nothing is asked
    bad = admin.post(
        f"/boxes/{box.pk}/remote-access/", {"exposed_port": 22, "public_key": "nope", "hours": 1}, follow=True
    )
    assert "OpenSSH public key" in bad.content.decode() and not RemoteAccess.objects.exists()
    admin.post(f"/boxes/{box.pk}/remote-access/", {"exposed_port": 22, "public_key": KEY, "hours": 2})
    access = RemoteAccess.objects.get()
    assert (access.state, access.duration_s) == ("requested", 7200)
    # the admin sees no Approve button; the owner does
    assert "Approve</button>" not in admin.get(f"/boxes/{box.pk}/").content.decode()
    assert "Approve</button>" in owner.get(f"/boxes/{box.pk}/").content.decode()
    url = f"/boxes/{box.pk}/remote-access/{access.pk}/approve/"
    # the admin's approval is refused; the owner's needs the confirmation ticked
    assert admin.post(url, {"confirm": "on"}).status_code == 403
    unconfirmed = owner.post(url, follow=True)
    assert "Tick the box to confirm" in unconfirmed.content.decode()
    assert RemoteAccess.objects.get().state == "requested"
    owner.post(url, {"confirm": "on"})
    assert RemoteAccess.objects.get().state == "approved"
    assert Command.objects.filter(box=box, kind=CommandKind.REMOTE_ACCESS_PREPARE).exists()
    # closing it
    admin.post(f"/boxes/{box.pk}/remote-access/{access.pk}/close/")
    assert RemoteAccess.objects.get().state == "closed"


def test_agent_boxes_have_no_remote_access_section(box_factory: Any, people: Any) -> None:
    box = box_factory(organization=people.org)
    assert 'id="remote-access"' not in logged_in(people.owner).get(f"/boxes/{box.pk}/").content.decode()
    other = box_factory(organization=people.other_org, protocol=BoxProtocol.OTB)
    outsider_post = logged_in(people.admin).post(
        f"/boxes/{other.pk}/remote-access/", {"exposed_port": 22, "public_key": KEY, "hours": 1}
    )
    assert outsider_post.status_code == 404 and not RemoteAccess.objects.exists()
