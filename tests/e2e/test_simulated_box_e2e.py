"""The simulated box end to end: ``otb-agent simulate`` against uvicorn applies each WAN policy the
server gives it, and its telemetry (the per-link throughput stored by the writer) obeys the mode and
the roles; its diagnostics describe the simulated box, not the host running the simulator."""

from __future__ import annotations

import ipaddress
import json
import urllib.request
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from django.db import connection

from fleet.commands.models import Command
from fleet.commands.services import command_create
from fleet.core.audit import Actor
from fleet.core.models import Box
from tests.e2e.browser import LiveServer, agent_start, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

LINKS = "wan:fiber wan2:vdsl wan3:lte"
DOCUMENTATION = [ipaddress.ip_network(n) for n in ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24")]
Samples = dict[datetime, tuple[int, dict[str, tuple[bool, int, int]]]]


def samples_since(box: Box, since: datetime) -> Samples:
    """ts -> (tunnel rx, {iface: (up, rx, tx)}) of the samples stored after ``since``."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT b.ts, b.rx_bps, w.iface, w.up, w.rx_bps, w.tx_bps FROM telemetry_box_sample b"
            " JOIN telemetry_wan_sample w ON w.box_id = b.box_id AND w.seq = b.seq AND w.ts = b.ts"
            " WHERE b.box_id = %s AND b.ts > %s ORDER BY b.ts",
            [box.pk, since],
        )
        rows: Samples = {}
        for ts, tunnel_rx, iface, up, rx, tx in cursor.fetchall():
            rows.setdefault(ts, (tunnel_rx, {}))[1][iface] = (up, rx, tx)
    return rows


def apply_policy(
    server: LiveServer, token: str, box: Box, mode: str, roles: dict[str, str], count: int = 5
) -> Samples:
    """Set the policy through the API (the server computes the configuration the box fetches), wait
    until the agent applied it, and return ``count`` samples taken after that."""
    body = {"mode": mode, "interfaces": [{"name": name, "role": role} for name, role in roles.items()]}
    request = urllib.request.Request(
        f"{server.url}/api/v1/boxes/{box.pk}/wan-policy",
        data=json.dumps(body).encode(),
        method="PUT",
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200

    def applied() -> Box | None:
        row = Box.objects.get(pk=box.pk)
        return row if row.applied_config_hash == row.config_hash and row.wan_policy["mode"] == mode else None

    row = wait_until(applied, timeout=45, message=f"{mode} was not applied:\n{server.log_tail()}")
    assert row.applied_at is not None
    since = row.applied_at + timedelta(seconds=1.5)
    return wait_until(
        lambda: (found := samples_since(box, since)) and len(found) >= count and found,
        timeout=45,
        message=f"no telemetry after {mode} was applied",
    )


def test_the_simulated_box_obeys_each_policy_mode(
    transactional_db: Any,
    asgi_server: LiveServer,
    people: Any,
    claimed_box_factory: Any,
    agent_token_factory: Any,
    api_token_factory: Any,
    tmp_path: Path,
) -> None:
    # given a simulated box with three links (fibre, VDSL, 4G) connected to the server
    box = claimed_box_factory(people.org, "POLICY-E2E")
    token = api_token_factory(people.admin, people.org)
    agent = agent_start(
        asgi_server, serial=box.serial, token=agent_token_factory(box), workdir=tmp_path, wans=LINKS
    )
    try:
        # when the policy aggregates the fibre and the VDSL with the 4G as backup
        found = apply_policy(
            asgi_server, token, box, "aggregate", {"wan": "primary", "wan2": "primary", "wan3": "backup"}
        )
        # then both primaries carry, the backup idles, and the tunnel carries less than the links
        for tunnel_rx, links in found.values():
            assert set(links) == {"wan", "wan2", "wan3"}
            if links["wan"][0] and links["wan2"][0]:
                assert links["wan"][1] > 0 and links["wan2"][1] > 0, links
                assert links["wan3"][1:] == (0, 0), links
            assert 0 < tunnel_rx < sum(rx for _, rx, _ in links.values())

        # when it fails over from the fibre to the VDSL, the 4G disabled
        found = apply_policy(
            asgi_server, token, box, "failover", {"wan": "primary", "wan2": "backup", "wan3": "disabled"}
        )
        # then only the fibre carries (while up), and the disabled link is no longer reported
        for _, links in found.values():
            assert set(links) == {"wan", "wan2"}
            if links["wan"][0]:
                assert links["wan"][1] > 0 and links["wan2"][1:] == (0, 0), links
            else:
                assert links["wan2"][1] > 0, links

        # when it balances connections over the VDSL and the 4G, the fibre disabled
        found = apply_policy(
            asgi_server,
            token,
            box,
            "load-balance",
            {"wan": "disabled", "wan2": "primary", "wan3": "primary"},
            count=8,
        )
        # then the connections land on both primaries and nothing on the fibre
        assert all(set(links) == {"wan2", "wan3"} for _, links in found.values())
        assert sum(links["wan2"][1] for _, links in found.values()) > 0
        assert sum(links["wan3"][1] for _, links in found.values()) > 0
    finally:
        agent.stop()


def test_diagnostics_on_a_simulated_box_describe_the_simulated_box(
    transactional_db: Any,
    asgi_server: LiveServer,
    people: Any,
    claimed_box_factory: Any,
    agent_token_factory: Any,
    tmp_path: Path,
) -> None:
    # given a simulated box, online, with its configuration applied
    box = claimed_box_factory(people.org, "DIAG-E2E")
    agent = agent_start(
        asgi_server, serial=box.serial, token=agent_token_factory(box), workdir=tmp_path, wans=LINKS
    )
    try:
        wait_until(
            lambda: Box.objects.filter(pk=box.pk, applied_at__isnull=False).exists(),
            timeout=45,
            message="the configuration was not applied",
        )
        # when an admin runs the diagnostics
        command = command_create(actor=Actor.for_user(people.admin), box=box, kind="diagnostics", params={})
        done = wait_until(
            lambda: (row := Command.objects.get(pk=command.pk)).state in ("succeeded", "failed") and row,
            timeout=60,
            message=f"the diagnostics did not finish:\n{asgi_server.log_tail()}",
        )
    finally:
        agent.stop()
    # then every check passes (the tunnel is up), and the interfaces are the simulated box's
    assert done.state == "succeeded", (done.error, done.result)
    checks = done.result["checks"]
    assert all(check["ok"] for check in checks.values())
    interfaces = {item["ifname"]: item for item in json.loads(checks["interfaces"]["output"])}
    assert {"wan", "wan2", "wan3", "otb0", "lan", "lo"} == set(interfaces)
    for name in ("wan", "wan2", "wan3"):
        for address in interfaces[name]["addr_info"]:
            assert any(ipaddress.ip_address(address["local"]) in network for network in DOCUMENTATION)
    box.refresh_from_db()
    tunnel = {address["local"] for address in interfaces["otb0"]["addr_info"]}
    assert str(box.server.public_ipv4) in checks["tunnel"]["output"]
    assert len(tunnel) == 2  # its end of the tunnel and its public address from the configuration
