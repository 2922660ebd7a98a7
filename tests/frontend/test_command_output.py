"""How a command's result reads on the box page: for people, never a raw Python dict."""

from __future__ import annotations

import asyncio
import html
import json
import re
from datetime import timedelta
from typing import Any

import otb_protocol
import pytest
from django.test import Client
from django.utils import timezone
from otb_agent.collectors.simulated import SimulatedCollector, SimulatedSystem
from otb_agent.system import FleetAccess, Progress

from fleet.commands.choices import CommandKind, CommandState
from fleet.commands.models import Command
from frontend.command_output import command_view, rate, speed_test_history

CONFIG = {
    "server": {"name": "agg-par-1", "public_ipv4": "192.0.2.11", "port": 51821, "wg_public_key": "k="},
    "tunnel": {"box_address": "100.64.0.1", "server_address": "100.64.0.0", "prefix": "100.64.0.0/31"},
    "public_ipv4": "198.51.100.7",
    "wan_policy": {
        "mode": "aggregate",
        "interfaces": [
            {"name": "wan", "role": "primary"},
            {"name": "wan2", "role": "primary"},
            {"name": "wan3", "role": "backup"},
        ],
    },
}


def command(
    kind: str, result: dict[str, Any] | None, state: str = CommandState.SUCCEEDED, **fields: Any
) -> Command:
    return Command(kind=kind, state=state, result=result, params=fields.pop("params", {}), **fields)


def simulated_diagnostics(all_down: bool = False) -> dict[str, Any]:
    box = SimulatedCollector("VIEW-1", wans=[("wan", "fiber"), ("wan2", "vdsl"), ("wan3", "lte")])
    box.configure(CONFIG)
    if all_down:
        for wan in box.wans:
            wan.down_left = 1000
    box.collect()

    async def run() -> dict[str, Any]:
        async def report(percent: int, message: str) -> None:
            return None

        progress = Progress(report, asyncio.ensure_future)
        fleet = FleetAccess("http://localhost:8000", "otba_x", None)
        return await SimulatedSystem(box).diagnostics(
            fleet, checks=None, tunnel_iface="otb0", progress=progress
        )

    return asyncio.run(run())


def test_rates_read_like_a_person_writes_them() -> None:
    assert rate(423.4) == "423 Mbit/s"
    assert rate(63.04) == "63 Mbit/s"
    assert rate(8.44) == "8.4 Mbit/s"
    assert rate(0.5) == "500 kbit/s"
    assert rate(1234.0) == "1.23 Gbit/s"
    assert rate(None) == "\N{EN DASH}"


def test_a_speed_test_reads_down_and_up_with_where_it_ran() -> None:
    both = command(
        CommandKind.SPEED_TEST,
        {"direction": "both", "iface": "wan2", "bytes": 10_000_000, "duration_s": 0.189, "mbps": 423.4,
         "upload": {"bytes": 10_000_000, "duration_s": 1.27, "mbps": 63.0}},
        params={"direction": "both", "iface": "wan2"},
    )  # fmt: skip
    view = command_view(both, labels={"wan2": "VDSL"})
    assert view.headline == "↓ 423 Mbit/s ↑ 63 Mbit/s"
    assert view.target == "VDSL (wan2)"
    assert ("Download", "10 MB in 0.19 s") in view.facts and ("Upload", "10 MB in 1.27 s") in view.facts
    tunnel = command_view(
        command(CommandKind.SPEED_TEST, {"direction": "download", "mbps": 880.0, "bytes": 1})
    )
    assert tunnel.headline == "↓ 880 Mbit/s" and tunnel.target == "all links (tunnel)"
    upload = command_view(
        command(CommandKind.SPEED_TEST, {"direction": "upload", "upload": {"mbps": 12.5, "bytes": 1}})
    )
    assert upload.headline == "↑ 12.5 Mbit/s"


def test_simulated_diagnostics_read_check_by_check() -> None:
    # given the diagnostics of a simulated box, in the real tools' formats
    view = command_view(command(CommandKind.DIAGNOSTICS, simulated_diagnostics()))
    # then the headline counts the checks, and each check says what it found in a sentence
    assert view.headline == "All 7 checks passed"
    checks = {check.name: check for check in view.checks}
    assert list(checks) == ["interfaces", "routes", "dns", "ping", "mptcp", "tunnel", "traceroute"]
    assert checks["interfaces"].label == "Interfaces"
    assert checks["interfaces"].summary == "6 interfaces, 6 up"
    rows = {row[0]: row for row in checks["interfaces"].table}
    assert rows["otb0"][2] == "100.64.0.1/31, 198.51.100.7/32"
    assert checks["routes"].summary.startswith("Default route via ") and "dev wan" in checks["routes"].summary
    assert checks["ping"].summary.startswith("3 of 3 replies, average ")
    assert checks["mptcp"].summary == "3 endpoints (1 backup)"
    assert checks["tunnel"].summary.startswith("Peer 192.0.2.11:51821, last handshake ")
    assert checks["traceroute"].summary == "2 hops to localhost"
    assert all(check.ok for check in view.checks)
    # and nothing is shown as a Python or JSON structure
    assert "{'" not in repr([c.summary for c in view.checks]) and '{"' not in repr(
        [c.detail for c in view.checks]
    )


def test_failed_diagnostics_name_the_failed_checks_and_why() -> None:
    view = command_view(
        command(CommandKind.DIAGNOSTICS, simulated_diagnostics(all_down=True), state=CommandState.FAILED)
    )
    assert view.headline.startswith("Failed: routes, dns, ping, mptcp, tunnel, traceroute")
    tunnel = next(check for check in view.checks if check.name == "tunnel")
    assert not tunnel.ok and "every WAN link is down" in tunnel.summary


def test_other_results_read_as_sentences_or_labelled_facts() -> None:
    assert command_view(command(CommandKind.REBOOT, {"rebooting": True})).headline == "The box is restarting."
    applied = command_view(command(CommandKind.REFRESH_CONFIG, {"config_hash": "ab" * 32, "changed": True}))
    assert applied.headline == "Configuration abababababab… applied."
    unchanged = command_view(
        command(CommandKind.REFRESH_CONFIG, {"config_hash": "ab" * 32, "changed": False})
    )
    assert unchanged.headline == "The configuration was already up to date."
    odd = command_view(command(CommandKind.RESTART_SERVICES, {"restarted": True, "extra": {"a": [1, 2]}}))
    assert ("Extra", "a: 1, 2") in odd.facts
    truncated = command_view(command(CommandKind.DIAGNOSTICS, {"truncated": True, "excerpt": "{'checks': …"}))
    assert truncated.headline == "The result was too large to keep; its beginning is below."


@pytest.mark.django_db
def test_the_commands_list_renders_results_and_the_speed_test_history(
    people: Any, claimed_box_factory: Any
) -> None:
    # given a box with finished speed tests through the tunnel and through a link, and diagnostics
    box = claimed_box_factory(people.org, "VIEW-0001")
    now = timezone.now()
    for minutes, iface, down, up in (
        (30, None, 880.0, 250.0),
        (20, "wan2", 55.2, 11.0),
        (10, None, 901.0, 260.0),
    ):
        params = {"direction": "both", **({"iface": iface} if iface else {})}
        result = {
            "direction": "both",
            "mbps": down,
            "bytes": 10_000_000,
            "upload": {"mbps": up, "bytes": 10_000_000},
        }
        if iface:
            result["iface"] = iface
        row = Command.objects.create(
            box=box, organization=people.org, kind=CommandKind.SPEED_TEST, state=CommandState.SUCCEEDED,
            params=params, result=result, expires_at=now, finished_at=now - timedelta(minutes=minutes),
        )  # fmt: skip
        Command.objects.filter(pk=row.pk).update(created_at=now - timedelta(minutes=minutes))
    Command.objects.create(
        box=box, organization=people.org, kind=CommandKind.DIAGNOSTICS, state=CommandState.SUCCEEDED,
        result=simulated_diagnostics(), expires_at=now, finished_at=now,
    )  # fmt: skip
    client = Client()
    client.force_login(people.viewer)
    # when the commands list is read
    fragment = client.get(f"/boxes/{box.pk}/commands/").content.decode()
    # then each result reads for people
    assert "↓ 901 Mbit/s ↑ 260 Mbit/s" in fragment and "↓ 55.2 Mbit/s ↑ 11 Mbit/s" in fragment
    assert "All 7 checks passed" in fragment and "3 endpoints (1 backup)" in fragment
    assert "{&#x27;" not in fragment and "{'" not in fragment
    # and the speed tests' history is there for the chart, per link and in total (latest first)
    history = speed_test_history(list(Command.objects.filter(box=box)))
    assert [(point["target"], point["down_mbps"]) for point in history] == [
        ("", 880.0),
        ("wan2", 55.2),
        ("", 901.0),
    ]
    chart = re.search(r'id="chart-speed"[^>]* data-points="([^"]*)"', fragment)
    assert chart is not None
    assert len(json.loads(html.unescape(chart.group(1)))) == 3
    # and the checks are in the protocol's order, whatever order the database kept them in
    assert re.findall(r'data-check="(\w+)"', fragment) == list(otb_protocol.DIAGNOSTIC_CHECKS)
    latest = fragment[fragment.index('id="speed-latest"') :]
    assert "All links (tunnel)" in latest and "wan2" in latest
