"""The gateway's report: host health and, per box, the tunnel as the gateway sees it."""

from __future__ import annotations

from otb_gateway import __version__
from otb_gateway.peers import parse_peers
from otb_gateway.plan import build_plan, counter_names
from otb_gateway.report import Reporter, plain_tcp_port_counts, port_counts

from tests.gateway.fakehost import FakeHost
from tests.gateway.peerdata import box_id, document, key, peer
from tests.gateway.test_converge import gateway

STAT_1 = "cpu  100 0 100 800 0 0 0 0 0 0\ncpu0 1 2 3 4\n"
STAT_2 = "cpu  200 0 200 1400 0 0 0 0 0 0\n"  # +200 busy of +800 in all: 25 %
MEMINFO = "MemTotal:       1000000 kB\nMemFree:         100000 kB\nMemAvailable:    250000 kB\n"


def test_the_report_carries_host_health_and_per_box_counters() -> None:
    # given a converged host with traffic counted and one box with a recent handshake
    host = FakeHost()
    _, converger = gateway(host)
    plan = build_plan(parse_peers(document(peer(0), peer(1, shadowsocks=None))).peers, wg_port=51819)
    converger.converge(plan)
    assert host.table is not None and host.link is not None
    names = counter_names(box_id(0))
    host.table["counters"].update(
        {names["tcp_rx"]: 1000, names["fwd_rx"]: 24, names["tcp_tx"]: 5000, names["fwd_tx"]: 7}
    )
    host.link.peers[key("box-0")].handshake = 1_796_571_000
    host.established = {51820: 3, 51821: 9}
    host.files.update(
        {
            "/proc/stat": STAT_1,
            "/proc/loadavg": "0.42 0.30 0.20 1/100 1234\n",
            "/proc/meminfo": MEMINFO,
            "/sys/class/net/eth0/statistics/rx_bytes": "123456\n",
            "/sys/class/net/eth0/statistics/tx_bytes": "654321\n",
        }
    )
    clock = iter([100.0, 137.0])
    reporter = Reporter(host, upstream="eth0", clock=lambda: next(clock), wall=lambda: 1_796_571_012.5)
    host.files["/proc/stat"] = STAT_2

    # when the report is built
    report = reporter.build(plan=plan, wg_public_key=key("server"), errors=["box x: it broke"])

    # then
    assert report["gateway_version"] == __version__ and report["uptime_s"] == 37
    assert (report["load1"], report["cpu_pct"], report["mem_pct"]) == (0.42, 25.0, 75.0)
    assert report["wg_public_key"] == key("server") and report["peers"] == 2
    assert (report["converge_errors"], report["last_error"]) == (1, "box x: it broke")
    assert report["upstream"] == {"name": "eth0", "rx_bytes": 123456, "tx_bytes": 654321}
    assert sorted(report["boxes"], key=lambda row: row["box_id"]) == [
        {"box_id": box_id(0), "rx_bytes": 1024, "tx_bytes": 5007, "connections": 3, "handshake_age_s": 12},
        # no ss-server: no connections counted on its port; no handshake yet
        {"box_id": box_id(1), "rx_bytes": 0, "tx_bytes": 0, "connections": 0, "handshake_age_s": None},
    ]


def test_a_gateway_without_a_peers_document_leaves_boxes_out_and_unknown_figures_null() -> None:
    reporter = Reporter(FakeHost(), upstream=None)
    report = reporter.build(plan=None, wg_public_key="", errors=[])
    assert "boxes" not in report and report["peers"] == 0 and report["upstream"] is None
    assert report["load1"] is None and report["cpu_pct"] is None and report["mem_pct"] is None


def test_established_sockets_are_counted_per_local_port() -> None:
    # `ss -HnM state established` as iproute2 6.1 prints it (no Netid/State columns)
    text = (
        "0      0      203.0.113.1:51820   198.51.100.7:40112\n"
        "0      0      203.0.113.1:51820   198.51.100.8:40113\n"
        "0      0      [2001:db8::1]:51821 [2001:db8::7]:40114\n"
        "garbage\n"
    )
    assert port_counts(text) == {51820: 2, 51821: 1}


def test_plain_tcp_connections_count_and_mptcp_subflows_do_not() -> None:
    # `ss -Hnti state established`: a subflow says tcp-ulp-mptcp in its details line
    text = (
        "0      0      127.0.0.1:5000  127.0.0.1:45540\n"
        "\t bbr wscale:10,10 rto:204 cwnd:10 snd_wnd:65536\n"
        "0      0      127.0.0.1:5000  127.0.0.1:45544\n"
        "\t bbr wscale:10,10 rto:204 cwnd:10 tcp-ulp-mptcp flags:Mec token:0000(id:0)/989d8c87(id:0)\n"
        "0      0      127.0.0.1:45540 127.0.0.1:5000\n"
        "\t bbr wscale:10,10 rto:204 cwnd:10\n"
    )
    assert plain_tcp_port_counts(text) == {5000: 1, 45540: 1}
