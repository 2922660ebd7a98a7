"""The data plane, end to end in network namespaces: LAN clients, two boxes running the real
otb-agent (the first with two shaped WANs, each behind its own NAT ISP), an aggregation server
running the real otb-gateway, an internet host, and the real backend (uvicorn, Celery, PostgreSQL,
Redis) reachable only over the lab's addresses. Every box is imported, enrolled by its agent,
claimed and configured through the API; the lab itself writes only the links.

The tests share one lab and run in file order (the last one unclaims a box). They need root, as CI
has: without it they fail rather than skip."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

from netlab.environment import lab_database_drop, lab_environment, redis_flush
from netlab.measure import longest_stall_s, recovery_s
from netlab.netns import LabError
from netlab.scenario import INET_ADDRESS, PEER, Lab, LabBox, wait_for

pytestmark = pytest.mark.lab

LINK_MBPS = 20.0


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    assert os.geteuid() == 0, "the lab builds network namespaces: run the tests as root (CI does)"
    env = lab_environment()
    the_lab = Lab(prefix="otblabt", links=2, link_mbps=LINK_MBPS, second_box=True, env=env)
    try:
        with the_lab:
            yield the_lab
    finally:
        redis_flush(env)
        lab_database_drop(env)


@pytest.fixture(scope="module")
def box(lab: Lab) -> LabBox:
    return lab.boxes[0]


@pytest.fixture(scope="module")
def box2(lab: Lab) -> LabBox:
    return lab.boxes[1]


def wans_by_name(lab: Lab, box: LabBox) -> dict[str, Any]:
    status = lab.owner.get(f"/api/v1/boxes/{box.box_id}/status")  # type: ignore[union-attr]
    return {wan["iface"]: wan for wan in status["wans"]}


def test_the_bond_beats_the_best_single_link_and_leaves_with_the_public_ip(lab: Lab, box: LabBox) -> None:
    public = lab.public_ip(box)
    lab.set_policy(box, "aggregate", {"wan1": "primary", "wan2": "disabled"})
    single = lab.iperf(box, 5)
    lab.set_policy(box, "aggregate", {"wan1": "primary", "wan2": "primary"})
    bonded = lab.iperf(box, 5)
    assert single["source"] == bonded["source"] == public
    assert bonded["mbps"] >= 1.6 * single["mbps"], (single["mbps"], bonded["mbps"])
    assert bonded["mbps"] >= 0.8 * 2 * LINK_MBPS, bonded["mbps"]


def test_telemetry_reports_each_link_and_the_tunnel_from_the_kernel(lab: Lab, box: LabBox) -> None:
    """During a bonded upload, the box's status shows both links carrying and the tunnel's own
    throughput (not a sum of links) near what the receiver measured."""
    seen: dict[str, Any] = {}

    def sample() -> None:
        time.sleep(4)  # two telemetry intervals into the transfer
        seen.update(lab.owner.get(f"/api/v1/boxes/{box.box_id}/status"))  # type: ignore[union-attr]

    result = lab.iperf(box, 7, during=sample)
    wans = {wan["iface"]: wan for wan in seen["wans"]}
    assert set(wans) == {"wan1", "wan2"} and all(wan["up"] for wan in wans.values())
    for wan in wans.values():
        assert wan["tx_bps"] > 0.25 * LINK_MBPS * 1e6, wans
    tunnel_tx_mbps = seen["tx_bps"] / 1e6
    assert 0.7 * result["mbps"] <= tunnel_tx_mbps <= 1.3 * result["mbps"], (tunnel_tx_mbps, result["mbps"])
    links_tx_mbps = sum(wan["tx_bps"] for wan in wans.values()) / 1e6
    assert tunnel_tx_mbps != links_tx_mbps


def test_udp_icmp_and_an_inbound_port_forward_cross_the_tunnel(lab: Lab, box: LabBox) -> None:
    public = lab.public_ip(box)
    assert lab.udp_peer(box) == public
    # ICMP: counted on the internet host by source address
    lab.topo.ns.nft(
        "inet",
        "table inet seen { counter echo {}\n chain input { type filter hook input priority 0;"
        f" ip saddr {public} icmp type echo-request counter name echo; }}\n}}\n",
    )
    lab.topo.ns.exec(box.lan, "ping", "-c", "3", "-i", "0.2", "-W", "2", INET_ADDRESS)
    counters = lab.topo.ns.exec("inet", "nft", "list", "counter", "inet", "seen", "echo")
    assert "packets 3 " in counters, counters
    # inbound: a port forward set through the API reaches a service on the LAN
    service = lab.topo.ns.popen(box.lan, [*lab_peer_command(), "serve", "8080"])
    try:
        lab.owner.put(  # type: ignore[union-attr]
            f"/api/v1/boxes/{box.box_id}/port-forwards",
            {
                "port_forwards": [
                    {"proto": "tcp", "port": 8080, "to_address": "192.168.50.10", "to_port": 8080}
                ]
            },
        )
        lab.wait_applied(box)
        answer = wait_for(
            lambda: lab.topo.ns.exec(
                "inet", *lab_peer_command(), "tcp", public, "8080", "2", check=False
            ).strip(),
            15,
            "the forwarded port to answer",
        )
        assert answer.split(":")[0] == INET_ADDRESS
    finally:
        service.kill()
        service.wait()


def lab_peer_command() -> list[str]:
    return [sys.executable, str(PEER)]


def test_a_cut_link_never_stalls_the_transfer_and_the_backend_sees_it(lab: Lab, box: LabBox) -> None:
    lab.set_policy(box, "aggregate", {"wan1": "primary", "wan2": "primary"})
    wan1 = lab.topo.wans_of("box")[0]
    marks: dict[str, float] = {}
    interval = lab.telemetry_interval_s

    def cut_and_restore() -> None:
        start = time.monotonic()
        time.sleep(4)
        lab.cut(wan1)
        marks["cut"] = time.monotonic() - start
        wait_for(
            lambda: not wans_by_name(lab, box)["wan1"]["up"], 2 * interval + 1, "the backend to see wan1 down"
        )
        marks["seen_down"] = time.monotonic() - start - marks["cut"]
        time.sleep(max(0.0, 8 - (time.monotonic() - start)))
        lab.restore(wan1)
        marks["restore"] = time.monotonic() - start
        wait_for(lambda: wans_by_name(lab, box)["wan1"]["up"], 2 * interval + 1, "the backend to see wan1 up")
        marks["seen_up"] = time.monotonic() - start - marks["restore"]

    result = lab.iperf(box, 16, during=cut_and_restore)
    intervals = result["intervals"]
    before = statistics.mean(mbps for start, mbps in intervals if 1.0 <= start < marks["cut"] - 0.2)
    assert longest_stall_s(intervals) <= 1.0, intervals
    during = [mbps for start, mbps in intervals if marks["cut"] + 1 <= start < marks["restore"]]
    assert statistics.mean(during) >= 0.6 * LINK_MBPS, during
    recovered = recovery_s(intervals, marks["restore"], 0.85 * before)
    assert recovered is not None and recovered <= 5.0, (recovered, before, intervals)
    events = lab.owner.get(f"/api/v1/boxes/{box.box_id}/events/")  # type: ignore[union-attr]
    kinds = [event["kind"] for event in events["results"]]
    assert "wan_down" in kinds and "wan_up" in kinds, kinds


def test_failover_carries_on_the_backup_only_when_the_primary_is_down(lab: Lab, box: LabBox) -> None:
    wan1 = lab.topo.wans_of("box")[0]
    lab.set_policy(box, "failover", {"wan1": "primary", "wan2": "backup"})
    before = lab.wan_tx_bytes(box)
    normal = lab.iperf(box, 4)
    after = lab.wan_tx_bytes(box)
    sent = {name: after[name] - before[name] for name in after}
    # "Almost nothing": MPTCP re-injects some retransmissions on the backup subflow while the shaped
    # primary's queue drops (measured 5-8 %); a backup that aggregated would carry half.
    assert sent["wan2"] < 0.10 * sent["wan1"], sent
    assert normal["mbps"] >= 0.6 * LINK_MBPS  # one link through the tunnel, on a loaded machine

    lab.cut(wan1)
    try:
        time.sleep(1.5)
        before = lab.wan_tx_bytes(box)
        backup = lab.iperf(box, 4)
        after = lab.wan_tx_bytes(box)
    finally:
        lab.restore(wan1)
    sent = {name: after[name] - before[name] for name in after}
    assert sent["wan2"] > 0.9 * (sent["wan1"] + sent["wan2"]), sent
    assert backup["mbps"] >= 0.7 * LINK_MBPS, backup["mbps"]

    # a disabled link carries nothing, whatever the mode (a policy change right after the primary
    # came back)
    lab.set_policy(box, "aggregate", {"wan1": "primary", "wan2": "disabled"})
    time.sleep(1.5)
    before = lab.wan_tx_bytes(box)
    lab.iperf(box, 3)
    after = lab.wan_tx_bytes(box)
    sent = {name: after[name] - before[name] for name in after}
    assert sent["wan2"] < 0.02 * sent["wan1"], sent
    lab.set_policy(box, "aggregate", {"wan1": "primary", "wan2": "primary"})


def test_two_boxes_each_leave_with_their_own_address_and_cannot_borrow_the_other(
    lab: Lab, box: LabBox, box2: LabBox
) -> None:
    public1, public2 = lab.public_ip(box), lab.public_ip(box2)
    assert public1 != public2
    assert lab.tcp_peer(box) == public1 and lab.tcp_peer(box2) == public2
    assert lab.udp_peer(box2) == public2
    # box2 sending from box1's public address through its own tunnel: the gateway drops it
    lab.topo.ns.ip("box2", "addr", "add", f"{public1}/32", "dev", box2.tunnel)
    try:
        spoofed = lab.topo.ns.exec(
            "box2", *lab_peer_command(), "udp", INET_ADDRESS, "7007", "2", public1, check=False
        ).strip()
    finally:
        lab.topo.ns.ip("box2", "addr", "del", f"{public1}/32", "dev", box2.tunnel)
    assert spoofed == ""
    # box1's shadowsocks password on box2's port: refused (every box has its own endpoint)
    config1 = box_config(box)
    config2 = box_config(box2)
    assert lab_ss_tunnel(lab, config2, config1["credentials"]["shadowsocks"]["password"]) == ""
    assert lab_ss_tunnel(lab, config2, config2["credentials"]["shadowsocks"]["password"]) == public2


def box_config(box: LabBox) -> dict[str, Any]:
    return dict(json.loads((box.state_dir / "config.json").read_text()))


def lab_ss_tunnel(lab: Lab, config: dict[str, Any], password: str) -> str:
    """From box2's namespace, an ss-tunnel to the internet peer through ``config``'s server port
    with ``password``; the address the peer saw, or '' when the server refused."""
    server = config["server"]
    tunnel = lab.topo.ns.popen(
        "box2",
        ["ss-tunnel", "-s", server["public_ipv4"], "-p", str(server["port"]), "-k", password,
         "-m", config["credentials"]["shadowsocks"]["method"], "-l", "17007", "-L", f"{INET_ADDRESS}:7007"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_for(lambda: "17007" in lab.topo.ns.exec("box2", "ss", "-ltn"), 5, "ss-tunnel")
        answer = lab.topo.ns.exec("box2", *lab_peer_command(), "tcp", "127.0.0.1", "17007", "3", check=False)
        return answer.strip().split(":")[0] if answer.strip() else ""
    finally:
        tunnel.kill()
        tunnel.wait()


def test_unclaiming_removes_the_box_from_the_gateway_within_10_s(lab: Lab, box2: LabBox) -> None:
    config = box_config(box2)
    public = lab.public_ip(box2)
    key = config["credentials"]["wireguard"]["box_public_key"]
    port = str(config["server"]["port"])
    state = lab.gateway_state()
    assert key in state["wg"] and f":{port} " in state["listen"] and public in state["nft"] + state["routes"]

    lab.owner.post(f"/api/v1/boxes/{box2.box_id}/unclaim")  # type: ignore[union-attr]
    started = time.monotonic()

    def gone() -> bool:
        now = lab.gateway_state()
        return (
            key not in now["wg"]
            and f":{port} " not in now["listen"]
            and public not in now["nft"] + now["routes"]
        )

    try:
        wait_for(gone, 10, "the gateway to remove the unclaimed box")
    except LabError:
        pytest.fail(f"still configured after 10 s: {lab.gateway_state()}")
    assert time.monotonic() - started <= 10
    assert lab.tcp_peer(box2, timeout=2) == ""
