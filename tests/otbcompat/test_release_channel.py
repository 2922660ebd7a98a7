"""``GET /1.0/devices/{id}/release_channel`` as the unchanged v1.x ``otb-action-updateReleaseChannel``
uses it (run against a real otb-fleet with netlab/realbox): it truncates /etc/opkg/distfeeds.conf, then
writes ``jq -r '.feeds[] | [.type,.name,.url] | join(" ")'`` with ``@ARCH@``/``@BOARD@`` replaced,
which opkg reads as ``src/gz <name> <url>``. So each feed goes out with its name in ``name`` and its
address in ``url``, and the action is never handed out while the box's channel has no feeds (the box
would be left with an empty feed list)."""

from __future__ import annotations

import json
import shutil
import subprocess
from typing import Any

import pytest
from django.conf import settings
from django.test import Client
from django.test.utils import override_settings

from fleet.commands.choices import CommandKind, CommandState
from fleet.commands.services import command_create
from fleet.core.models import Box
from tests.otbcompat.test_actions import SYSTEM, device_for, otb_call, todo

pytestmark = pytest.mark.django_db

FEEDS = {
    "stable": [
        ["openwrt_core", "https://downloads.example.net/stable/targets/@BOARD@/packages"],
        ["openwrt_base", "https://downloads.example.net/stable/packages/@ARCH@/base"],
    ]
}


@pytest.fixture
def otb_box(people: Any, claimed_box_factory: Any) -> Box:
    return claimed_box_factory(people.org)


def with_feeds(feeds: dict[str, Any]) -> Any:
    return override_settings(OTB={**settings.OTB, "OTB_COMPAT_RELEASE_FEEDS": json.dumps(feeds)})


def distfeeds_lines(answer: Any) -> list[str]:
    """What the box writes to /etc/opkg/distfeeds.conf from the answer (its jq, then its sed)."""
    written = subprocess.run(
        ["jq", "-r", '.feeds[] | [.type,.name,.url] | join(" ")'],
        input=json.dumps(answer),
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return written.replace("@ARCH@", "x86_64").replace("@BOARD@", "x86/64").splitlines()


@pytest.mark.skipif(shutil.which("jq") is None, reason="jq is how the box reads the answer")
def test_the_box_writes_opkg_feed_lines_name_then_url(otb_box: Box) -> None:
    # given feeds for the box's channel
    client = Client()
    device = device_for(client, otb_box)
    with with_feeds(FEEDS):
        # when the box asks for its release channel
        response = otb_call(
            client, "GET", f"devices/{device['device_id']}/release_channel", jwt=device["jwt"]
        )
    assert response.status_code == 200, response.content
    # then every line it writes is `src/gz <name> <url>`, the order opkg reads
    lines = distfeeds_lines(response.json())
    assert lines == [
        "src/gz openwrt_core https://downloads.example.net/stable/targets/x86/64/packages",
        "src/gz openwrt_base https://downloads.example.net/stable/packages/x86_64/base",
    ]
    for line in lines:
        kind, name, url = line.split(" ")
        assert kind == "src/gz" and not name.startswith("http") and url.startswith("https://")


def test_update_release_channel_is_handed_out_when_the_channel_has_feeds(otb_box: Box) -> None:
    client = Client()
    device = device_for(client, otb_box)
    with with_feeds(FEEDS):
        command = command_create(actor=SYSTEM, box=otb_box, kind=CommandKind.UPDATE_RELEASE_CHANNEL)
        assert todo(client, device) == {
            "id": str(command.id),
            "action": "updateReleaseChannel",
            "arguments": {},
        }
    command.refresh_from_db()
    assert command.state == CommandState.SENT


@pytest.mark.parametrize("feeds", [{}, {"beta": FEEDS["stable"]}, {"stable": []}])
def test_update_release_channel_without_feeds_fails_and_never_reaches_the_box(
    otb_box: Box, feeds: dict[str, Any]
) -> None:
    # given no feeds for the box's channel (stable)
    client = Client()
    device = device_for(client, otb_box)
    with with_feeds(feeds):
        command = command_create(actor=SYSTEM, box=otb_box, kind=CommandKind.UPDATE_RELEASE_CHANNEL)
        # when the box polls: it gets nothing to do (its distfeeds.conf stays as it is)
        assert todo(client, device)["action"] == "wait"
    # then the command failed, saying why
    command.refresh_from_db()
    assert command.state == CommandState.FAILED
    assert "OTB_COMPAT_RELEASE_FEEDS" in command.error
