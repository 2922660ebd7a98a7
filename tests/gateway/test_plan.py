"""The plan: a peer list -> the host's state and every piece of each box (pure)."""

from __future__ import annotations

import json
from typing import Any

from otb_gateway.peers import parse_peers
from otb_gateway.plan import BoxPlan, HostPlan, Limit, box_plan, build_plan, object_prefix

from tests.gateway.peerdata import box_id, document, key, peer


def plan_box(entry: dict[str, Any]) -> BoxPlan:
    parsed = parse_peers(document(entry))
    assert not parsed.problems
    return box_plan(parsed.peers[0])


def test_a_complete_peer_gives_every_piece() -> None:
    box = plan_box(peer(3))
    prefix = object_prefix(box_id(3))

    assert box.addresses == ("100.64.0.6/31",)
    assert box.routes == ("2001:db8:3::/56", "203.0.113.13/32")
    assert box.wg_peer is not None and box.wg_peer.public_key == key("box-3")
    assert box.wg_peer.preshared_key == key("psk-3")
    assert box.wg_peer.allowed_ips == ("100.64.0.7/32", "2001:db8:3::/56", "203.0.113.13/32")
    assert json.loads(box.ss_config or "") == {
        "server": "0.0.0.0",
        "server_port": 51823,
        "password": "secret-3",
        "method": "chacha20-ietf-poly1305",
        "local_address": "100.64.0.6",
        "mode": "tcp_only",
        "timeout": 3600,
    }
    assert box.elements == {
        "box_ports": {"51823": ""},
        "snat4": {"100.64.0.6": "203.0.113.13", "100.64.0.7": "203.0.113.13"},
        "tcp_rx": {"51823": f"{prefix}_tcp_rx"},
        "tcp_tx": {"51823": f"{prefix}_tcp_tx"},
        "fwd_rx4": {"100.64.0.7": f"{prefix}_fwd_rx", "203.0.113.13": f"{prefix}_fwd_rx"},
        "fwd_rx6": {"2001:db8:3::/56": f"{prefix}_fwd_rx"},
        "fwd_tx4": {"100.64.0.7": f"{prefix}_fwd_tx", "203.0.113.13": f"{prefix}_fwd_tx"},
        "fwd_tx6": {"2001:db8:3::/56": f"{prefix}_fwd_tx"},
    }
    assert box.counters == tuple(sorted(f"{prefix}_{k}" for k in ("fwd_rx", "fwd_tx", "tcp_rx", "tcp_tx")))
    assert box.limits == {}


def test_rate_limits_become_policers_on_every_path_of_the_box() -> None:
    box = plan_box(peer(0, rate_limit={"download_kbps": 20000, "upload_kbps": 4000}))
    prefix = object_prefix(box_id(0))
    down, up = f"{prefix}_down_20000", f"{prefix}_up_4000"

    assert box.limits == {down: Limit(2_500_000, 250_000), up: Limit(500_000, 50_000)}
    # download: to the box's addresses, and to its ss-server's outbound address (replies from the internet)
    assert box.elements["down4"] == {"100.64.0.0": down, "100.64.0.1": down, "203.0.113.10": down}
    assert box.elements["down6"] == {"2001:db8::/56": down}
    # upload: from the box through the tunnel, and TCP to its ss-server port
    assert box.elements["up4"] == {"100.64.0.1": up, "203.0.113.10": up}
    assert box.elements["up6"] == {"2001:db8::/56": up}
    assert box.elements["up_port"] == {"51820": up}


def test_a_small_rate_keeps_a_minimum_burst() -> None:
    box = plan_box(peer(0, rate_limit={"download_kbps": 64, "upload_kbps": None}))
    assert list(box.limits.values()) == [Limit(bytes_per_s=8000, burst_bytes=16000)]


def test_a_box_without_wireguard_key_gets_no_tunnel_pieces_but_its_ss_server_and_nat() -> None:
    box = plan_box(peer(0, wg_public_key="", wg_preshared_key=None))
    assert box.wg_peer is None and box.routes == ()
    assert box.addresses == ("100.64.0.0/31",) and box.ss_config is not None
    assert set(box.elements) == {"snat4", "tcp_rx", "tcp_tx"}


def test_a_box_without_shadowsocks_gets_no_ss_server_and_no_tcp_counters() -> None:
    box = plan_box(peer(0, shadowsocks=None))
    assert box.ss_config is None and box.ss_fingerprint is None
    assert "tcp_rx" not in box.elements and "up_port" not in box.elements
    assert box.wg_peer is not None


def test_a_box_without_tunnel_addresses_gets_nothing_but_its_port_is_known() -> None:
    box = plan_box(peer(0, tunnel=None))
    assert (box.addresses, box.routes, box.wg_peer, box.ss_config, box.elements) == ((), (), None, None, {})
    assert box.port == 51820


def test_each_box_plan_depends_on_its_own_peer_only() -> None:
    parsed = parse_peers(document(peer(0), peer(1), peer(2)))
    together = build_plan(parsed.peers, wg_port=51819)
    alone = build_plan(parsed.peers[1:2], wg_port=51819)
    assert together.boxes[box_id(1)] == alone.boxes[box_id(1)]
    assert build_plan(parsed.peers, wg_port=51819) == together


def test_the_host_table_redirects_box_ports_to_the_wireguard_port_and_changes_signature_with_it() -> None:
    host = HostPlan(wg_port=51819)
    script = host.table_script(replace=False)
    assert "fib daddr type local udp dport @box_ports redirect to :51819" in script
    assert 'oifname != "otbgw0" snat ip to ip saddr map @snat4' in script
    assert f"counter {host.table_signature}" in script and "delete table" not in script
    assert "delete table inet otb_gateway" in host.table_script(replace=True)
    assert HostPlan(wg_port=51900).table_signature != host.table_signature
    assert host.sysctls == (
        ("net.ipv4.ip_forward", "1"),
        ("net.ipv6.conf.all.forwarding", "1"),
        ("net.mptcp.enabled", "1"),
    )
    assert (host.mptcp_subflows, host.mptcp_add_addr_accepted) == (8, 0)
