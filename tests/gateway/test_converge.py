"""The converger against a pretend host (tests/gateway/fakehost.py): what it changes for a peer list,
and above all what it does not change."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest
from otb_agent.util import Logger
from otb_gateway.converge import Converger, parse_nft_table, parse_wg_dump
from otb_gateway.peers import parse_peers
from otb_gateway.plan import Plan, build_plan, object_prefix
from otb_gateway.supervise import Supervisor

from tests.gateway.fakehost import FakeHost
from tests.gateway.peerdata import box_id, document, key, peer

STATE = "/var/lib/otb-gateway"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def gateway(host: FakeHost, clock: Clock | None = None) -> tuple[Supervisor, Converger]:
    """A gateway's supervisor and converger on ``host`` (a new pair = the gateway restarted)."""
    clock = clock or Clock()
    log = Logger(stream=io.StringIO())
    supervisor = Supervisor(host, STATE, log, clock=clock, sleep=clock.sleep)
    return supervisor, Converger(host, supervisor, STATE, log, clock=clock, sleep=clock.sleep)


def plan_of(*peers: dict[str, Any], wg_port: int = 51819) -> Plan:
    parsed = parse_peers(document(*peers))
    assert not parsed.problems, parsed.problems
    return build_plan(parsed.peers, wg_port=wg_port)


def marks(n: int) -> list[str]:
    """Strings only box ``n``'s pieces contain (see peerdata.peer)."""
    return [
        box_id(n),
        object_prefix(box_id(n)),
        str(51820 + n),
        f"100.64.0.{2 * n} ",
        f"100.64.0.{2 * n}/",
        f"100.64.0.{2 * n + 1} ",
        f"100.64.0.{2 * n + 1}/",
        f"203.0.113.{10 + n} ",
        f"203.0.113.{10 + n}/",
        f"2001:db8:{n:x}::/56",
        key(f"box-{n}"),
    ]


def mentions(line: str, n: int, extra: tuple[str, ...] = ()) -> bool:
    return any(mark in line + " " for mark in [*marks(n), *extra])


def pieces_of(host: FakeHost, n: int) -> dict[str, Any]:
    """Everything of box ``n`` on the pretend host."""
    assert host.link is not None and host.table is not None
    prefix = object_prefix(box_id(n))
    return {
        "peer": host.link.peers.get(key(f"box-{n}")),
        "addresses": {a for a in host.link.addresses if a.startswith(f"100.64.0.{2 * n}/")},
        "routes": {r for r in host.link.routes if r in (f"203.0.113.{10 + n}/32", f"2001:db8:{n:x}::/56")},
        "elements": {
            (name, k, v)
            for name, items in host.table["sets"].items()
            for k, v in items.items()
            if v.startswith(prefix)
            or k in (str(51820 + n), f"100.64.0.{2 * n}", f"100.64.0.{2 * n + 1}", f"203.0.113.{10 + n}")
        },
        "objects": {
            name for name in [*host.table["counters"], *host.table["limits"]] if name.startswith(prefix)
        },
        "ss_pid": host.pid_of("ss-server", f"{STATE}/ss/{box_id(n)}.json"),
    }


# --- from nothing ---------------------------------------------------------------------------------


def test_a_bare_host_gets_the_host_settings_and_every_piece_of_each_box() -> None:
    # given a host with nothing of the gateway's
    host = FakeHost()
    _, converger = gateway(host)

    # when it converges to two boxes
    result = converger.converge(
        plan_of(peer(0), peer(1, rate_limit={"download_kbps": 20000, "upload_kbps": None}))
    )

    # then the host is set up ...
    assert result.errors == []
    assert host.sysctls == {
        "net.ipv4.ip_forward": "1",
        "net.ipv6.conf.all.forwarding": "1",
        "net.mptcp.enabled": "1",
    }
    assert host.mptcp == (8, 0)
    assert host.link is not None and host.link.up and host.link.mtu == 1420
    assert host.link.port == 51819 and host.link.private_key == host.files[f"{STATE}/wg.key"].strip()
    # ... and each box has its peer, address, routes, nftables elements and ss-server
    assert host.link.peers[key("box-1")].psk == key("psk-1")
    assert sorted(host.link.peers[key("box-1")].allowed) == [
        "100.64.0.3/32",
        "2001:db8:1::/56",
        "203.0.113.11/32",
    ]
    assert host.link.addresses == {"100.64.0.0/31", "100.64.0.2/31"}
    assert host.link.routes == {"203.0.113.10/32", "203.0.113.11/32", "2001:db8::/56", "2001:db8:1::/56"}
    assert host.table is not None
    assert host.table["sets"]["box_ports"] == {"51820": "", "51821": ""}
    assert host.table["sets"]["snat4"]["100.64.0.2"] == "203.0.113.11"
    assert host.table["sets"]["snat4"]["100.64.0.3"] == "203.0.113.11"
    assert host.table["limits"] == {f"{object_prefix(box_id(1))}_down_20000": [2_500_000, 250_000]}
    assert set(host.table["sets"]["down4"]) == {"100.64.0.2", "100.64.0.3", "203.0.113.11"}
    assert host.listening() == {51820, 51821}
    config = json.loads(host.files[f"{STATE}/ss/{box_id(1)}.json"])
    assert config["local_address"] == "100.64.0.2" and config["server_port"] == 51821
    assert config["password"] == "secret-1" and config["mode"] == "tcp_only"


def test_converging_to_the_same_plan_again_runs_no_command_at_all() -> None:
    host = FakeHost()
    _, converger = gateway(host)
    plan = plan_of(peer(0), peer(1))
    converger.converge(plan)
    host.take_changes()

    result = converger.converge(plan_of(peer(0), peer(1)))

    assert result.commands == 0 and result.errors == []
    assert host.changes == [] and host.reads == []


def test_a_restarted_gateway_adopts_the_running_children_and_changes_nothing() -> None:
    # given a host converged by a gateway that then went away, its children still running
    host = FakeHost()
    _, first = gateway(host)
    first.converge(plan_of(peer(0), peer(1)))
    pids = {n: host.pid_of("ss-server", f"{STATE}/ss/{box_id(n)}.json") for n in (0, 1)}
    wg_pid = host.pid_of("wireguard-go")
    host.take_changes()

    # when a new gateway starts on it and converges to the same peers
    supervisor, second = gateway(host)
    adopted = supervisor.adopt()
    result = second.converge(plan_of(peer(0), peer(1)))

    # then it adopted wireguard-go and both ss-servers, read the host, and changed nothing
    assert sorted(adopted) == sorted(["wireguard-go", f"ss-{box_id(0)}", f"ss-{box_id(1)}"])
    assert result.errors == [] and host.changes == []
    assert host.reads  # it did look
    assert host.pid_of("wireguard-go") == wg_pid
    assert {n: host.pid_of("ss-server", f"{STATE}/ss/{box_id(n)}.json") for n in (0, 1)} == pids


def test_a_restarted_gateway_replaces_a_child_whose_configuration_changed_meanwhile() -> None:
    host = FakeHost()
    _, first = gateway(host)
    first.converge(plan_of(peer(0), peer(1)))
    old = host.pid_of("ss-server", f"{STATE}/ss/{box_id(1)}.json")
    host.take_changes()

    supervisor, second = gateway(host)
    supervisor.adopt()
    second.converge(plan_of(peer(0), peer(1, shadowsocks={"password": "new", "method": "aes-256-gcm"})))

    changes = host.take_changes()
    assert changes and all(mentions(line, 1) for line in changes), changes
    assert host.pid_of("ss-server", f"{STATE}/ss/{box_id(1)}.json") not in (None, old)


# --- one box changes ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            {"shadowsocks": {"password": "rotated", "method": "chacha20-ietf-poly1305"}},
            ["kill", "write", "start"],
        ),
        ({"wg_preshared_key": key("psk-new")}, ["wg set otbgw0 peer"]),
        ({"rate_limit": {"download_kbps": 5000, "upload_kbps": 1000}}, ["nft -f -"]),
        ({"public_ipv4": "203.0.113.99"}, ["nft -f -", "wg set", "ip route del", "ip route replace"]),
        ({"ipv6_prefix": None}, ["nft -f -", "wg set", "ip route del"]),
    ],
    ids=["ss password", "preshared key", "rate limit", "public ip", "ipv6 prefix gone"],
)
def test_a_change_to_one_box_runs_commands_for_that_box_only(
    change: dict[str, Any], expected: list[str]
) -> None:
    # given three boxes converged
    host = FakeHost()
    _, converger = gateway(host)
    converger.converge(plan_of(peer(0), peer(1), peer(2)))
    others = {n: pieces_of(host, n) for n in (0, 2)}
    host.take_changes()

    # when box 1 changes
    result = converger.converge(plan_of(peer(0), peer(1, **change), peer(2)))

    # then every command was about box 1, the expected kinds ran, and boxes 0 and 2 are untouched
    changes = host.take_changes()
    assert result.errors == [] and result.touched == {box_id(1)}
    new_values = tuple(value for value in change.values() if isinstance(value, str))
    assert changes and all(
        mentions(line, 1, new_values) and not mentions(line, 0) and not mentions(line, 2) for line in changes
    ), changes
    for kind in expected:
        assert any(line.startswith(kind) for line in changes), (kind, changes)
    assert {n: pieces_of(host, n) for n in (0, 2)} == others
    # and a second round has nothing left to do
    assert converger.converge(plan_of(peer(0), peer(1, **change), peer(2))).commands == 0


def test_a_removed_box_loses_every_piece_and_the_others_keep_theirs_and_their_counters() -> None:
    # given three boxes converged, with traffic counted
    host = FakeHost()
    _, converger = gateway(host)
    converger.converge(
        plan_of(peer(0), peer(1, rate_limit={"download_kbps": 1000, "upload_kbps": 500}), peer(2))
    )
    assert host.table is not None
    for name in host.table["counters"]:
        host.table["counters"][name] = 12345
    others = {n: pieces_of(host, n) for n in (0, 2)}
    host.take_changes()

    # when box 1 leaves the list
    result = converger.converge(plan_of(peer(0), peer(2)))

    # then nothing of box 1 is left ...
    assert result.errors == [] and result.touched == {box_id(1)}
    gone = pieces_of(host, 1)
    assert gone == {
        "peer": None,
        "addresses": set(),
        "routes": set(),
        "elements": set(),
        "objects": set(),
        "ss_pid": None,
    }
    assert 51821 not in host.listening()
    assert f"{STATE}/ss/{box_id(1)}.json" not in host.files
    assert f"{STATE}/run/ss-{box_id(1)}.pid" not in host.files
    # ... only box 1 was touched, and the others kept their pieces and their counters
    assert all(mentions(line, 1) and not mentions(line, 0) and not mentions(line, 2) for line in host.changes)
    assert {n: pieces_of(host, n) for n in (0, 2)} == others
    assert all(value == 12345 for value in host.table["counters"].values())


def test_a_box_port_that_comes_or_goes_forgets_its_udp_flows() -> None:
    # NAT is decided on a flow's first packet: a box's WireGuard that spoke before its port was
    # redirected must not keep its unredirected flow (found in the lab: box 2 never got a handshake)
    host = FakeHost()
    _, converger = gateway(host)
    converger.converge(plan_of(peer(0), peer(1)))
    assert host.conntrack_flushed == ["51820", "51821"]
    converger.converge(plan_of(peer(0), peer(1)))
    assert host.conntrack_flushed == ["51820", "51821"]  # nothing came or went
    result = converger.converge(plan_of(peer(0)))
    assert result.errors == [] and host.conntrack_flushed == ["51820", "51821", "51821"]


def test_a_port_freed_by_one_box_can_go_to_a_new_box_in_the_same_round() -> None:
    # given box 1 on port 51821
    host = FakeHost()
    _, converger = gateway(host)
    converger.converge(plan_of(peer(0), peer(1)))

    # when box 1 leaves and box 9 arrives on the same port and tunnel
    newcomer = peer(9, tunnel_port=51821, tunnel=peer(1)["tunnel"], public_ipv4="203.0.113.11")
    result = converger.converge(plan_of(peer(0), newcomer))

    # then box 9 holds them
    assert result.errors == []
    assert (
        host.table is not None
        and host.table["sets"]["tcp_rx"]["51821"] == f"{object_prefix(box_id(9))}_tcp_rx"
    )
    assert host.pid_of("ss-server", f"{STATE}/ss/{box_id(9)}.json") is not None
    assert host.pid_of("ss-server", f"{STATE}/ss/{box_id(1)}.json") is None
    assert host.listening() == {51820, 51821}
    assert host.link is not None and set(host.link.peers) == {key("box-0"), key("box-9")}


def test_an_empty_list_removes_every_box_but_keeps_the_host_ready() -> None:
    host = FakeHost()
    _, converger = gateway(host)
    converger.converge(plan_of(peer(0), peer(1)))

    result = converger.converge(plan_of())

    assert result.errors == []
    assert (
        host.link is not None
        and host.link.peers == {}
        and host.link.addresses == set()
        and host.link.routes == set()
    )
    assert host.table is not None and all(items == {} for items in host.table["sets"].values())
    assert host.table["counters"] == {} and host.table["limits"] == {} and host.listening() == set()
    assert host.pid_of("wireguard-go") is not None


# --- failures and drift ---------------------------------------------------------------------------


def test_a_failing_command_names_its_box_does_not_hold_back_the_others_and_is_retried() -> None:
    # given a host where adding box 1's address fails
    host = FakeHost()
    _, converger = gateway(host)
    host.fail["100.64.0.2/31"] = "RTNETLINK answers: Permission denied"

    # when it converges to three boxes
    result = converger.converge(plan_of(peer(0), peer(1), peer(2)))

    # then the error names box 1 and the others are complete
    assert (
        len(result.errors) == 1 and box_id(1) in result.errors[0] and "Permission denied" in result.errors[0]
    )
    assert host.link is not None and host.link.addresses == {"100.64.0.0/31", "100.64.0.4/31"}
    # and once the cause is gone, the next round reads the host again and adds what is missing
    del host.fail["100.64.0.2/31"]
    host.take_changes()
    retry = converger.converge(plan_of(peer(0), peer(1), peer(2)))
    assert retry.errors == [] and host.reads
    assert host.changes == ["ip addr add 100.64.0.2/31 dev otbgw0"]


def test_an_nftables_batch_that_fails_is_applied_box_by_box() -> None:
    # given a host where box 1's public address cannot go into nftables
    host = FakeHost()
    _, converger = gateway(host)
    host.fail["203.0.113.11 :"] = "Error: Could not process rule: Invalid argument"

    result = converger.converge(plan_of(peer(0), peer(1), peer(2)))

    # then boxes 0 and 2 got their elements, and the one error names box 1
    assert [e for e in result.errors if "nftables" in e] == [e for e in result.errors if box_id(1) in e]
    assert len(result.errors) == 1
    assert host.table is not None and set(host.table["sets"]["box_ports"]) == {"51820", "51822"}


def test_drift_is_repaired_after_the_host_is_read_again() -> None:
    # given a converged host on which someone deleted a route and a map element
    host = FakeHost()
    _, converger = gateway(host)
    converger.converge(plan_of(peer(0), peer(1)))
    assert host.link is not None and host.table is not None
    host.link.routes.discard("203.0.113.11/32")
    del host.table["sets"]["snat4"]["100.64.0.3"]
    host.take_changes()

    # when the gateway reads the host again (its periodic resync) and converges
    converger.invalidate()
    result = converger.converge(plan_of(peer(0), peer(1)))

    # then exactly those come back
    assert result.errors == []
    assert host.changes == [
        "nft -f - <<< add element inet otb_gateway snat4 { 100.64.0.3 : 203.0.113.11 }",
        "ip route replace 203.0.113.11/32 dev otbgw0 proto static",
    ]


def test_wireguard_go_dying_is_noticed_and_its_interface_rebuilt_without_touching_ss_servers() -> None:
    # given two boxes converged
    clock = Clock()
    host = FakeHost()
    supervisor, converger = gateway(host, clock)
    plan = plan_of(peer(0), peer(1))
    converger.converge(plan)
    ss_pids = sorted(p for p, proc in host.processes.items() if proc.alive and proc.argv[0] == "ss-server")
    wg_pid = host.pid_of("wireguard-go")
    assert wg_pid is not None

    # when wireguard-go dies (its interface with it) and the supervisor notices and restarts it
    host.kill(wg_pid)
    assert supervisor.poll() == []  # backing off: it lived less than 30 s
    clock.now += 1.0
    assert supervisor.poll() == ["wireguard-go"]
    converger.invalidate()
    result = converger.converge(plan)

    # then the interface has its key, port, peers, addresses and routes again; ss-servers kept running
    assert result.errors == []
    assert (
        host.link is not None
        and host.link.port == 51819
        and set(host.link.peers) == {key("box-0"), key("box-1")}
    )
    assert host.link.addresses == {"100.64.0.0/31", "100.64.0.2/31"} and len(host.link.routes) == 4
    assert (
        sorted(p for p, proc in host.processes.items() if proc.alive and proc.argv[0] == "ss-server")
        == ss_pids
    )


def test_a_new_wireguard_port_rebuilds_the_table_and_the_listen_port() -> None:
    host = FakeHost()
    _, converger = gateway(host)
    converger.converge(plan_of(peer(0)))
    host.take_changes()

    result = converger.converge(plan_of(peer(0), wg_port=51900))

    assert result.errors == []
    assert host.link is not None and host.link.port == 51900
    assert any(
        "delete table inet otb_gateway" in line and "redirect to :51900" in line for line in host.changes
    )
    assert host.table is not None and host.table["sets"]["box_ports"] == {"51820": ""}


def test_teardown_removes_children_table_and_configurations() -> None:
    host = FakeHost()
    _, converger = gateway(host)
    converger.converge(plan_of(peer(0), peer(1)))

    supervisor2, converger2 = gateway(host)
    supervisor2.adopt()
    converger2.teardown()

    assert host.link is None and host.table is None and host.listening() == set()
    assert not [p for p in host.files if "/ss/" in p or "/run/" in p]
    assert all(not proc.alive for proc in host.processes.values())


# --- parsing the real tools' output ---------------------------------------------------------------


def test_wg_dump_is_parsed() -> None:
    text = (
        "cHJpdmF0ZQ==\tcHVibGlj\t51819\toff\n"
        f"{key('a')}\t{key('p')}\t192.0.2.7:40001\t100.64.0.1/32,203.0.113.10/32\t1796571000\t100\t200\toff\n"
        f"{key('b')}\t(none)\t(none)\t(none)\t0\t0\t0\toff\n"
    )
    private, port, peers, handshakes = parse_wg_dump(text)
    assert (private, port) == ("cHJpdmF0ZQ==", 51819)
    assert peers[key("a")].allowed_ips == ("100.64.0.1/32", "203.0.113.10/32")
    assert peers[key("a")].preshared_key == key("p") and peers[key("b")].preshared_key is None
    assert peers[key("b")].allowed_ips == () and handshakes == {key("a"): 1796571000, key("b"): 0}


def test_nft_json_is_parsed() -> None:
    text = json.dumps(
        {
            "nftables": [
                {"metainfo": {"version": "1.0.6"}},
                {"counter": {"name": "otb_schema_abc", "bytes": 0}},
                {"counter": {"name": "bx_tcp_rx", "bytes": 42}},
                {
                    "limit": {
                        "name": "bx_down_8",
                        "rate": 1,
                        "rate_unit": "kbytes",
                        "burst": 16000,
                        "burst_unit": "bytes",
                    }
                },
                {"set": {"name": "box_ports", "elem": [51820]}},
                {
                    "map": {
                        "name": "fwd_rx6",
                        "elem": [[{"prefix": {"addr": "2001:db8::", "len": 56}}, "bx_fwd_rx"]],
                    }
                },
                {"map": {"name": "up4"}},
            ]
        }
    )
    signature, elements, counters, limits = parse_nft_table(text)
    assert signature == "otb_schema_abc" and counters == {"bx_tcp_rx": 42}
    assert limits["bx_down_8"].bytes_per_s == 1024 and limits["bx_down_8"].burst_bytes == 16000
    assert elements == {"box_ports": {"51820": ""}, "fwd_rx6": {"2001:db8::/56": "bx_fwd_rx"}, "up4": {}}


def test_many_boxes_reach_the_kernel_in_one_ip_batch_and_one_wg_addconf() -> None:
    # given a bare host and ten boxes
    host = FakeHost()
    _, converger = gateway(host)

    result = converger.converge(plan_of(*(peer(n) for n in range(10))))

    # then addresses and routes went in one ip process, new peers in one wg process
    assert result.errors == []
    assert sum(line.startswith("ip -force -batch -") for line in host.changes) == 1
    assert sum(line.startswith("wg addconf otbgw0 /dev/stdin <<< (secret)") for line in host.changes) == 1
    assert not [
        line for line in host.changes if line.startswith(("ip addr", "ip route", "wg set otbgw0 peer"))
    ]
    assert host.link is not None and len(host.link.peers) == 10 and len(host.link.routes) == 20
    assert host.link.peers[key("box-9")].psk == key("psk-9")
    # and one box leaving afterwards is a handful of single commands
    host.take_changes()
    converger.converge(plan_of(*(peer(n) for n in range(9))))
    assert not [line for line in host.changes if "batch" in line or "addconf" in line]
    assert all(mentions(line, 9) for line in host.changes)
