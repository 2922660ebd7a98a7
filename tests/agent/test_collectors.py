from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path

import otb_protocol
import pytest
from otb_agent.collectors import parse_wan_arg, wans_from_config
from otb_agent.collectors.linux import LinuxCollector
from otb_agent.collectors.openwrt import (
    OpenWrtCollector,
    parse_mptcp_endpoints,
    parse_mwan3_status,
    parse_ubus_dump,
)
from otb_agent.collectors.probe import PingProbe, parse_ping
from otb_agent.collectors.simulated import HEADER_EFFICIENCY, SimulatedCollector

FIX = Path(__file__).parent / "fixtures"
OWRT = FIX / "openwrt"


def valid(sample):
    otb_protocol.validate_message({"type": "telemetry", "seq": 1, "samples": [sample]})


class Clock:
    def __init__(self, t=1_700_000_000.0):
        self.t = t

    def __call__(self):
        return self.t


def make_root(tmp_path: Path, net_dev: str) -> Path:
    root = tmp_path / "root"
    (root / "proc/net").mkdir(parents=True)
    (root / "proc/sys/net/netfilter").mkdir(parents=True)
    (root / "proc/sys/kernel/random").mkdir(parents=True)
    (root / "proc/stat").write_text(
        "cpu  1000 0 500 8000 100 0 50 0 0 0\ncpu0 500 0 250 4000 50 0 25 0 0 0\nintr 1\nctxt 2\n"
    )
    (root / "proc/meminfo").write_text(
        "MemTotal:         251904 kB\nMemFree:           80000 kB\n"
        "MemAvailable:     125952 kB\nBuffers:  1 kB\n"
    )
    (root / "proc/loadavg").write_text("0.42 0.30 0.25 2/97 4242\n")
    (root / "proc/uptime").write_text("3790.55 7000.10\n")
    (root / "proc/sys/net/netfilter/nf_conntrack_count").write_text("187\n")
    (root / "proc/sys/kernel/random/boot_id").write_text("3f1a8e4c-54d4-4a8e-9c55-0d6d5b1e2f3a\n")
    (root / "etc").mkdir()
    (root / "etc/openwrt_release").write_text("DISTRIB_ID='OpenWrt'\nDISTRIB_RELEASE='23.05.3'\n")
    (root / "proc/net/dev").write_text(net_dev)
    for dev, oper, carrier in [
        ("eth1", "up", "1"),
        ("pppoe-vdsl", "unknown", "1"),
        ("wwan0", "unknown", "1"),
        ("tun0", "unknown", "1"),
        ("eth0", "down", "0"),
    ]:
        d = root / "sys/class/net" / dev
        d.mkdir(parents=True)
        (d / "operstate").write_text(oper + "\n")
        (d / "carrier").write_text(carrier + "\n")
    return root


def advance(root: Path, clock: Clock, net_dev: str, dt: float = 10.0):
    clock.t += dt
    (root / "proc/net/dev").write_text(net_dev)
    (root / "proc/stat").write_text("cpu  1300 0 600 8550 100 0 50 0 0 0\n")


def test_ping_parsers():
    r = parse_ping((FIX / "ping_iputils.txt").read_text())
    assert r == {"rtt_ms": 5.233, "jitter_ms": 0.306, "loss_pct": 0.0}
    r = parse_ping((FIX / "ping_busybox.txt").read_text())
    assert r["rtt_ms"] == 48.619 and r["loss_pct"] == pytest.approx(33.33, abs=0.01)
    assert r["jitter_ms"] == pytest.approx(14.602)
    r = parse_ping((FIX / "ping_busybox_down.txt").read_text())
    assert r == {"rtt_ms": None, "jitter_ms": None, "loss_pct": 100.0}
    assert parse_ping("") == {"rtt_ms": None, "jitter_ms": None, "loss_pct": None}


def test_probe_runs_command_and_survives_missing_tool(tmp_path):
    p = PingProbe("192.0.2.1", command=f"cat {FIX / 'ping_iputils.txt'}")
    assert p.probe(["eth1"])["eth1"]["rtt_ms"] == 5.233
    missing = PingProbe("192.0.2.1", command="definitely-not-a-ping-binary -I {iface} {target}")
    assert missing.probe(["eth1", "wwan0"]) == {
        "eth1": {"rtt_ms": None, "jitter_ms": None, "loss_pct": None},
        "wwan0": {"rtt_ms": None, "jitter_ms": None, "loss_pct": None},
    }
    assert missing.missing


def test_linux_collector_on_fake_tree(tmp_path):
    net1 = (OWRT / "proc_net_dev_1.txt").read_text()
    net2 = (OWRT / "proc_net_dev_2.txt").read_text()
    root = make_root(tmp_path, net1)
    clock = Clock()
    probe = PingProbe("192.0.2.1", command=f"cat {FIX / 'ping_iputils.txt'}")
    c = LinuxCollector(
        root=str(root),
        wans=[parse_wan_arg("eth1:fiber:Fibre"), parse_wan_arg("eth0:vdsl"), parse_wan_arg("wwan0:lte:4G")],
        probe=probe,
        tunnel_iface="tun0",
        clock=clock,
    )
    first = c.collect()
    valid(first)
    assert first["rx_bps"] == 0 and first["cpu_pct"] == 0.0  # no deltas yet
    advance(root, clock, net2)
    s = c.collect()
    valid(s)
    assert s["uptime_s"] == 3790 and s["load1"] == 0.42 and s["conntrack"] == 187
    assert s["mem_pct"] == 50.0
    assert s["cpu_pct"] == pytest.approx(100 * 400 / 950, abs=0.01)
    wans = {w["iface"]: w for w in s["wans"]}
    assert wans["eth1"]["up"] is True and wans["eth1"]["kind"] == "fiber" and wans["eth1"]["label"] == "Fibre"
    assert wans["eth1"]["rx_bps"] == 12_500_000 * 8 // 10
    assert wans["eth1"]["tx_bps"] == 2_500_000 * 8 // 10
    assert wans["eth1"]["rtt_ms"] == 5.233
    assert wans["eth0"]["up"] is False and wans["eth0"]["rtt_ms"] is None
    assert wans["wwan0"]["up"] is True and wans["wwan0"]["rx_bps"] == 0
    # aggregate throughput from the tunnel interface
    assert s["tunnel_up"] is True
    assert s["rx_bps"] == 18_750_000 * 8 // 10 and s["tx_bps"] == 3_750_000 * 8 // 10
    assert c.boot_id() == "3f1a8e4c-54d4-4a8e-9c55-0d6d5b1e2f3a"
    assert c.firmware_version() == "23.05.3"


def test_linux_collector_wans_from_config_and_missing_files(tmp_path):
    c = LinuxCollector(root=str(tmp_path / "empty"))
    c.configure(
        {
            "wan_policy": {
                "mode": "failover",
                "interfaces": [
                    {"name": "eth1", "role": "primary", "kind": "fiber", "up_kbps": 1, "down_kbps": 2},
                    {"name": "wwan0", "role": "backup", "kind": "lte"},
                    {"name": "eth9", "role": "disabled", "kind": "vdsl"},
                ],
            }
        }
    )
    s = c.collect()  # nothing exists: zeros, links down, no crash
    valid(s)
    assert [w["iface"] for w in s["wans"]] == ["eth1", "wwan0"]
    assert all(w["up"] is False for w in s["wans"]) and s["tunnel_up"] is False
    assert (
        wans_from_config({"wan_policy": {"interfaces": [{"name": "x", "kind": "weird"}]}})[0]["kind"]
        == "other"
    )


class recorded_runner:  # used like the function it replaces
    """A command runner answering from ``outputs`` and recording every argv in ``calls``."""

    def __init__(self, outputs: dict[str, str]) -> None:
        self.outputs = outputs
        self.calls: list[list[str]] = []

    def __call__(self, argv: Sequence[str]) -> tuple[int, str]:
        self.calls.append(list(argv))
        key = " ".join(argv)
        if key not in self.outputs:
            raise FileNotFoundError(argv[0])
        return 0, self.outputs[key]


OPENWRT_OUTPUTS = {
    "ubus call network.interface dump": (OWRT / "ubus_network_interface_dump.json").read_text(),
    "mwan3 status": (OWRT / "mwan3_status.txt").read_text(),
    "ip mptcp endpoint show": (OWRT / "ip_mptcp_endpoint_show.txt").read_text(),
}


def test_openwrt_parsers():
    ifaces = parse_ubus_dump(OPENWRT_OUTPUTS["ubus call network.interface dump"])
    assert ifaces["wan"] == {
        "up": True,
        "l3_device": "eth1",
        "device": "eth1",
        "proto": "dhcp",
        "ipv4": "203.0.113.45",
        "default_route": True,
    }
    assert ifaces["vdsl"]["l3_device"] == "pppoe-vdsl" and ifaces["lte"]["proto"] == "qmi"
    assert ifaces["lan"]["default_route"] is False and ifaces["wan6"]["up"] is False
    mw = parse_mwan3_status(OPENWRT_OUTPUTS["mwan3 status"])
    assert mw == {
        "wan": {"status": "online", "tracking": "active"},
        "vdsl": {"status": "online", "tracking": "active"},
        "lte": {"status": "offline", "tracking": "active"},
        "wan6": {"status": "unknown", "tracking": "down"},
    }
    eps = parse_mptcp_endpoints(OPENWRT_OUTPUTS["ip mptcp endpoint show"])
    assert eps[2] == {
        "address": "100.72.14.9",
        "id": 3,
        "flags": ["subflow", "backup"],
        "dev": "wwan0",
        "port": None,
    }
    assert eps[3]["flags"] == ["signal"]


def test_openwrt_collector_on_recorded_outputs(tmp_path):
    root = make_root(tmp_path, (OWRT / "proc_net_dev_1.txt").read_text())
    clock = Clock()
    runner = recorded_runner(OPENWRT_OUTPUTS)
    c = OpenWrtCollector(root=str(root), runner=runner, clock=clock)
    c.collect()
    advance(root, clock, (OWRT / "proc_net_dev_2.txt").read_text())
    s = c.collect()
    valid(s)
    wans = {w["iface"]: w for w in s["wans"]}
    assert list(wans) == ["wan", "vdsl", "lte"]  # auto-detected from mwan3; wan6 (dhcpv6) skipped
    assert wans["wan"]["up"] is True and wans["wan"]["public_ip"] == "203.0.113.45"
    assert wans["wan"]["subflows"] == 1 and wans["wan"]["rx_bps"] == 10_000_000
    assert wans["vdsl"]["up"] is True and wans["vdsl"]["rx_bps"] == 5_000_000
    # lte: netifd says up but mwan3 tracking says offline -> down; CGNAT address is not public
    assert wans["lte"]["up"] is False and wans["lte"]["public_ip"] is None and wans["lte"]["subflows"] == 0
    assert wans["lte"]["kind"] == "lte"
    assert ["ubus", "call", "network.interface", "dump"] in runner.calls


def test_openwrt_collector_config_and_missing_tools(tmp_path):
    root = make_root(tmp_path, (OWRT / "proc_net_dev_1.txt").read_text())
    outputs = {"ubus call network.interface dump": OPENWRT_OUTPUTS["ubus call network.interface dump"]}
    c = OpenWrtCollector(root=str(root), runner=recorded_runner(outputs), clock=Clock())
    c.configure(
        {
            "wan_policy": {
                "mode": "aggregate",
                "interfaces": [
                    {"name": "wan", "role": "primary", "kind": "fiber", "label": "Fibre Orange"},
                    {"name": "lte", "role": "backup", "kind": "lte"},
                ],
            }
        }
    )
    s = c.collect()
    valid(s)
    assert [(w["iface"], w["kind"], w["up"]) for w in s["wans"]] == [
        ("wan", "fiber", True),
        ("lte", "lte", True),
    ]
    assert s["wans"][0]["label"] == "Fibre Orange"
    assert sorted(c.missing_tools) == ["ip", "mwan3"]


def test_simulated_collector_is_seeded_and_valid():
    a = SimulatedCollector("SIM-00001", clock=Clock())
    b = SimulatedCollector("SIM-00001", clock=Clock())
    c = SimulatedCollector("SIM-00002", clock=Clock())
    assert [w.kind for w in a.wans] == [w.kind for w in b.wans]
    assert 2 <= len(a.wans) <= 4
    kinds = set()
    for serial in range(50):
        kinds |= {w.kind for w in SimulatedCollector(f"S{serial}").wans}
    assert {"fiber", "lte", "satellite"} <= kinds
    assert a.collect() == b.collect()
    assert c.collect() != a.collect() or True
    ups_seen = set()
    for _ in range(2000):
        s = a.collect()
        valid(s)
        ups = [w["up"] for w in s["wans"]]
        ups_seen.add(tuple(ups))
        assert s["tunnel_up"] == any(ups)
        for w in s["wans"]:
            if not w["up"]:
                assert w["rx_bps"] == 0 and w["rtt_ms"] is None
    assert len(ups_seen) > 1  # links went down and came back
    fiber = SimulatedCollector("X", clock=Clock())
    fiber.wans[0].kind = "satellite"
    old_id = a.boot_id()
    a.reboot()
    assert a.uptime_s() == 0 and a.boot_id() != old_id


def test_simulated_failover_shifts_traffic():
    c = SimulatedCollector("SIM-FAILOVER", clock=Clock())
    c.load = 0.05
    base = c.collect()
    total = sum(w["rx_bps"] for w in base["wans"])
    for w in c.wans[1:]:
        w.down_left = 100
    s = c.collect()
    assert s["wans"][0]["up"] and all(not w["up"] for w in s["wans"][1:])
    assert all(w["rx_bps"] == 0 for w in s["wans"][1:])
    # the one link left carries everything; the tunnel delivers it less its headers
    assert s["rx_bps"] == int(s["wans"][0]["rx_bps"] * HEADER_EFFICIENCY) > 0 and total > 0


def test_fixture_files_are_present():
    assert shutil.which("cat")
    for name in ("ubus_network_interface_dump.json", "mwan3_status.txt", "ip_mptcp_endpoint_show.txt"):
        assert (OWRT / name).stat().st_size > 0


LINUX = FIX / "linux"


def nft_counters(up: int, down: int) -> str:
    def counter(name, nbytes):
        return {
            "counter": {"family": "inet", "name": name, "table": "otb_box", "packets": 9, "bytes": nbytes}
        }

    items = [{"metainfo": {"version": "1.0.6"}}, counter("redirect_up", up), counter("redirect_down", down)]
    return json.dumps({"nftables": items})


def test_linux_collector_reports_the_tunnel_subflows_and_public_address(tmp_path):
    """With the data plane (--apply linux): the aggregate is the tunnel's own bytes (otb0 plus the
    connections redirected to ss-redir), not a sum of the WANs; subflows come from ss per WAN
    address; public_ip is the box's dedicated address."""
    dev1 = (
        "Inter-|   Receive |  Transmit\n face |bytes packets|bytes packets\n"
        "   xw1: 1000000 0 0 0 0 0 0 0 500000 0 0 0 0 0 0 0\n"
        "   xw2: 1000000 0 0 0 0 0 0 0 500000 0 0 0 0 0 0 0\n"
        "  otb0: 100000 0 0 0 0 0 0 0 20000 0 0 0 0 0 0 0\n"
    )
    dev2 = dev1.replace("1000000", "9000000").replace("100000 ", "150000 ").replace("20000 ", "30000 ")
    root = make_root(tmp_path, dev1)
    for dev in ("xw1", "xw2", "otb0"):
        d = root / "sys/class/net" / dev
        d.mkdir(parents=True)
        (d / "operstate").write_text("unknown\n" if dev == "otb0" else "up\n")
        (d / "carrier").write_text("1\n")
    clock = Clock()
    outputs = {
        "ip -4 -j addr show": (LINUX / "ip_4_j_addr_show.json").read_text(),
        "ss -tniH": (LINUX / "ss_tniH.txt").read_text(),
        "nft -j list counters table inet otb_box": nft_counters(1_000, 2_000),
        "wg show otb0 latest-handshakes": f"c2VydmVy\t{int(clock.t) - 30}\n",
    }
    alive = [True]
    c = LinuxCollector(
        root=str(root),
        runner=recorded_runner(outputs),
        clock=clock,
        tunnel_iface="otb0",
        proxy_alive=lambda: alive[0],
    )
    c.configure(
        {
            "public_ipv4": "198.51.100.5",
            "wan_policy": {
                "mode": "aggregate",
                "interfaces": [{"name": "xw1", "role": "primary"}, {"name": "xw2", "role": "backup"}],
            },
        }
    )
    c.collect()
    advance(root, clock, dev2)
    outputs["nft -j list counters table inet otb_box"] = nft_counters(26_000, 1_002_000)
    s = c.collect()
    valid(s)
    wans = {w["iface"]: w for w in s["wans"]}
    assert wans["xw1"]["subflows"] == 1 and wans["xw2"]["subflows"] == 1  # the plain TCP socket is not one
    assert wans["xw1"]["public_ip"] == "198.51.100.5"
    assert wans["xw1"]["rx_bps"] == 8_000_000 * 8 // 10
    # tunnel: otb0 +50000 rx / +10000 tx, ss-redir +1000000 down / +25000 up over 10 s
    assert s["rx_bps"] == (50_000 + 1_000_000) * 8 // 10 and s["tx_bps"] == (10_000 + 25_000) * 8 // 10
    assert s["tunnel_up"] is True
    # ss-redir dead, or WireGuard without a recent handshake: the tunnel is down
    alive[0] = False
    assert c.collect()["tunnel_up"] is False
    alive[0] = True
    outputs["wg show otb0 latest-handshakes"] = f"c2VydmVy\t{int(clock.t) - 200}\n"
    assert c.collect()["tunnel_up"] is False
    outputs["wg show otb0 latest-handshakes"] = "c2VydmVy\t0\n"
    assert c.collect()["tunnel_up"] is False
