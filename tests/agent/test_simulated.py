"""The simulated box (otb_agent.collectors.simulated): it obeys the WAN policy it applied, its tunnel
carries less than the sum of its links, its addresses are documentation addresses, and its
diagnostics and speed tests describe the simulated box, not the host running the simulator."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import statistics
from typing import Any

import otb_protocol
import pytest
from otb_agent.collectors.simulated import SimulatedCollector, SimulatedSystem, wans_from_spec
from otb_agent.system import FleetAccess, Progress

DOCUMENTATION = [ipaddress.ip_network(n) for n in ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24")]
THREE_LINKS = [("wan", "fiber"), ("wan2", "vdsl"), ("wan3", "lte")]


class Clock:
    def __init__(self, t: float = 1_700_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def policy(mode: str, **roles: str) -> dict[str, Any]:
    return {
        "wan_policy": {
            "mode": mode,
            "interfaces": [{"name": name, "role": role, "kind": "other"} for name, role in roles.items()],
        }
    }


def simulated_box(serial: str = "POLICY-1", **config: Any) -> SimulatedCollector:
    box = SimulatedCollector(serial, clock=Clock(), wans=THREE_LINKS)
    box.load = 0.3
    if config:
        box.configure(config)
    return box


def links(sample: dict[str, Any]) -> dict[str, dict[str, Any]]:
    otb_protocol.validate_message({"type": "telemetry", "seq": 1, "samples": [sample]})
    return {wan["iface"]: wan for wan in sample["wans"]}


def take_down(box: SimulatedCollector, *ifaces: str) -> None:
    for wan in box.wans:
        if wan.iface in ifaces:
            wan.down_left = 10_000


def bring_up(box: SimulatedCollector, *ifaces: str) -> None:
    for wan in box.wans:
        if wan.iface in ifaces:
            wan.down_left = 0


# -- item 12: documentation addresses ------------------------------------------------------------


def test_simulated_public_ips_are_documentation_addresses() -> None:
    # given many simulated boxes (random WAN sets)
    for index in range(300):
        box = SimulatedCollector(f"SIM-{index:05d}", clock=Clock())
        for wan in box.wans:
            # then every WAN's public address is in one of the three documentation ranges
            address = ipaddress.ip_address(wan.ip)
            assert any(address in network for network in DOCUMENTATION), (box.serial, wan.iface, wan.ip)


# -- item 10: the policy is obeyed ---------------------------------------------------------------


def test_without_a_policy_every_link_is_a_primary_of_an_aggregate() -> None:
    box = simulated_box()
    sample = links(box.collect())
    assert set(sample) == {"wan", "wan2", "wan3"}
    assert all(wan["rx_bps"] > 0 for wan in sample.values() if wan["up"])


def test_aggregate_every_primary_carries_backups_idle_until_every_primary_is_down() -> None:
    # given an aggregate policy: two primaries and a backup
    box = simulated_box(**policy("aggregate", wan="primary", wan2="primary", wan3="backup"))
    bring_up(box, "wan", "wan2", "wan3")
    for _ in range(200):
        sample = links(box.collect())
        ups = {iface for iface, wan in sample.items() if wan["up"]}
        # then every primary that is up carries traffic, and the backup carries none while one is up
        for iface in {"wan", "wan2"} & ups:
            assert sample[iface]["rx_bps"] > 0 and sample[iface]["tx_bps"] > 0, iface
        if ups & {"wan", "wan2"}:
            assert sample["wan3"]["rx_bps"] == sample["wan3"]["tx_bps"] == 0
    # when every primary is down, the backup carries (MPTCP's backup subflow)
    take_down(box, "wan", "wan2")
    bring_up(box, "wan3")
    sample = links(box.collect())
    assert sample["wan3"]["rx_bps"] > 0 and sample["wan"]["rx_bps"] == sample["wan2"]["rx_bps"] == 0


def test_failover_moves_traffic_to_the_backup_only_while_every_primary_is_down_and_back() -> None:
    # given a failover policy: one primary, one backup, one disabled link
    box = simulated_box(**policy("failover", wan="primary", wan2="backup", wan3="disabled"))
    bring_up(box, "wan", "wan2", "wan3")
    sample = links(box.collect())
    # then the primary carries everything, the backup nothing, and the disabled link is not reported
    assert sample["wan"]["rx_bps"] > 0 and sample["wan2"]["rx_bps"] == 0 and "wan3" not in sample
    # when the primary goes down, the backup takes the traffic
    take_down(box, "wan")
    bring_up(box, "wan2")
    sample = links(box.collect())
    assert not sample["wan"]["up"] and sample["wan"]["rx_bps"] == 0
    assert sample["wan2"]["rx_bps"] > 0 and sample["wan2"]["tx_bps"] > 0
    # when it comes back, the traffic goes back to it
    bring_up(box, "wan", "wan2")
    sample = links(box.collect())
    assert sample["wan"]["rx_bps"] > 0 and sample["wan2"]["rx_bps"] == 0


def test_load_balance_spreads_connections_over_the_primaries_only() -> None:
    box = simulated_box(**policy("load-balance", wan="primary", wan2="primary", wan3="backup"))
    shares = []
    for _ in range(300):
        bring_up(box, "wan", "wan2", "wan3")
        sample = links(box.collect())
        assert sample["wan3"]["rx_bps"] == 0
        total = sample["wan"]["rx_bps"] + sample["wan2"]["rx_bps"]
        if sample["wan"]["up"] and sample["wan2"]["up"] and total:
            shares.append(sample["wan2"]["rx_bps"] / total)
    # connections land on both primaries, not in a fixed proportion (each is pinned to one link)
    assert min(shares) < max(shares) and 0 < statistics.mean(shares) < 1
    assert statistics.pstdev(shares) > 0.01


def test_a_disabled_link_carries_nothing_and_is_not_monitored_in_any_mode() -> None:
    for mode in ("aggregate", "load-balance", "failover"):
        box = simulated_box(**policy(mode, wan="primary", wan2="disabled", wan3="primary"))
        for _ in range(50):
            sample = links(box.collect())
            assert "wan2" not in sample, mode
            assert sum(w["rx_bps"] for w in sample.values()) > 0 or not any(w["up"] for w in sample.values())


def test_the_policy_speeds_cap_a_link() -> None:
    config = policy("aggregate", wan="primary", wan2="primary", wan3="backup")
    config["wan_policy"]["interfaces"][0]["down_kbps"] = 5_000
    config["wan_policy"]["interfaces"][0]["up_kbps"] = 1_000
    box = simulated_box(**config)
    box.load = 0.95
    for _ in range(50):
        sample = links(box.collect())
        assert sample["wan"]["rx_bps"] <= 5_000_000 and sample["wan"]["tx_bps"] <= 1_000_000


def test_the_tunnel_carries_about_092_of_the_bonded_links_not_their_sum() -> None:
    box = simulated_box(**policy("aggregate", wan="primary", wan2="primary", wan3="backup"))
    ratios = []
    for _ in range(400):
        bring_up(box, "wan", "wan2", "wan3")
        sample = box.collect()
        assert sample["tx_bps"] < sum(w["tx_bps"] for w in sample["wans"])
        if sum(1 for w in sample["wans"] if w["rx_bps"]) >= 2:  # bonded (no primary failed just now)
            ratios.append(sample["rx_bps"] / sum(w["rx_bps"] for w in sample["wans"]))
    assert len(ratios) > 300
    # then the tunnel's goodput is 0.88 to 0.94 of the sum of the links, about 0.92, with noise
    assert min(ratios) >= 0.88 and max(ratios) <= 0.94
    assert statistics.mean(ratios) == pytest.approx(0.92, abs=0.01)
    assert statistics.pstdev(ratios) > 0.002
    # and one link alone loses only the headers
    box.configure(policy("failover", wan="primary", wan2="backup", wan3="backup"))
    bring_up(box, "wan")
    sample = box.collect()
    single = sample["rx_bps"] / sum(w["rx_bps"] for w in sample["wans"])
    assert 0.94 < single < 0.96


def test_a_policy_naming_links_the_box_does_not_have_changes_nothing_for_them() -> None:
    box = simulated_box(**policy("failover", wan1="primary", lte0="backup"))
    sample = links(box.collect())
    # the box keeps its own links; links the policy does not name are primaries
    assert set(sample) == {"wan", "wan2", "wan3"}


# -- item 9: a demo box's links come from the seed ------------------------------------------------


def test_wans_from_spec() -> None:
    assert wans_from_spec("wan:fiber wan2:vdsl wan3:lte") == THREE_LINKS
    assert wans_from_spec("") == []
    for bad in ("wan", "wan:warp", "wan:fiber wan:lte", "WAN!:fiber"):
        with pytest.raises(ValueError):
            wans_from_spec(bad)
    box = SimulatedCollector("DEMO-0001", wans=wans_from_spec("wan:fiber wan2:5g"))
    assert [(w.iface, w.kind) for w in box.wans] == [("wan", "fiber"), ("wan2", "5g")]


# -- item 11: diagnostics and speed tests of the simulated box ------------------------------------

CONFIG = {
    "server": {
        "name": "agg-par-1",
        "host": "agg-par-1.example.net",
        "public_ipv4": "192.0.2.11",
        "port": 51821,
    },
    "tunnel": {"box_address": "100.64.0.1", "server_address": "100.64.0.0", "prefix": "100.64.0.0/31"},
    "public_ipv4": "198.51.100.7",
    **policy("aggregate", wan="primary", wan2="primary", wan3="backup"),
}


class Recorder:
    def __init__(self) -> None:
        self.reports: list[tuple[int, str]] = []

    async def send(self, percent: int, message: str) -> None:
        self.reports.append((percent, message))


async def test_simulated_diagnostics_describe_the_simulated_box() -> None:
    # given a simulated box that applied its configuration, all links up
    box = simulated_box(**CONFIG)
    bring_up(box, "wan", "wan2", "wan3")
    box.collect()
    system = SimulatedSystem(box)
    recorder = Recorder()
    progress = Progress(recorder.send, asyncio.ensure_future)
    fleet = FleetAccess("http://127.0.0.1:8000", "otba_x", None)
    # when it runs every diagnostic check
    out = await system.diagnostics(fleet, checks=None, tunnel_iface=None, progress=progress)
    checks = out["checks"]
    # then every check passes, as the tunnel is up
    assert list(checks) == list(otb_protocol.DIAGNOSTIC_CHECKS)
    assert all(check["ok"] for check in checks.values()), checks
    assert out["simulated"] is True and out["server"] == {"host": "127.0.0.1", "port": 8000}
    # and they show the simulated box's interfaces (ip -j addr), not the host's
    interfaces = {item["ifname"]: item for item in json.loads(checks["interfaces"]["output"])}
    assert {"lo", "lan", "wan", "wan2", "wan3", "otb0"} <= set(interfaces)
    wan_addresses = {info["local"] for info in interfaces["wan"]["addr_info"]}
    assert box.wans[0].ip in wan_addresses
    assert {info["local"] for info in interfaces["otb0"]["addr_info"]} == {"100.64.0.1", "198.51.100.7"}
    # the MPTCP endpoints follow the policy's roles, the tunnel peers with the configured server
    mptcp = checks["mptcp"]["output"]
    assert "dev wan3" in mptcp and "backup" in mptcp.split("dev wan3")[0].splitlines()[-1]
    assert "endpoint: 192.0.2.11:51821" in checks["tunnel"]["output"]
    assert checks["traceroute"]["output"].splitlines()[1].split()[1] == "100.64.0.0"  # the tunnel
    assert "3 packets transmitted, 3 received" in checks["ping"]["output"]
    # when every link is down the tunnel and the reachability checks fail, with a reason
    take_down(box, "wan", "wan2", "wan3")
    box.collect()
    out = await system.diagnostics(fleet, checks=["tunnel", "ping"], tunnel_iface=None, progress=progress)
    assert list(out["checks"]) == ["ping", "tunnel"]  # in the protocol's order
    assert not out["checks"]["tunnel"]["ok"] and out["checks"]["tunnel"]["error"]
    assert not out["checks"]["ping"]["ok"]


async def test_a_simulated_speed_test_follows_the_policy_and_the_links() -> None:
    box = simulated_box(**CONFIG)
    bring_up(box, "wan", "wan2", "wan3")
    system = SimulatedSystem(box)
    fleet = FleetAccess("http://127.0.0.1:9", "otba_x", None)
    nbytes = 1_000_000
    # through the tunnel: the primaries' capacity (fibre 900 + VDSL 60), less the tunnel's overhead
    moved, duration = await system.speed_test(fleet, direction="download", nbytes=nbytes, iface=None)
    tunnel_mbps = moved * 8 / duration / 1e6
    assert 960 * 0.6 < tunnel_mbps < 960 * 0.94  # not the backup's 80 too
    # through one link: that link's capacity
    moved, duration = await system.speed_test(fleet, direction="upload", nbytes=100_000, iface="wan2")
    assert 12 * 0.6 < moved * 8 / duration / 1e6 <= 12
    # a link that is down cannot be measured
    take_down(box, "wan3")
    with pytest.raises(OSError, match="wan3 is down"):
        await system.speed_test(fleet, direction="download", nbytes=nbytes, iface="wan3")
