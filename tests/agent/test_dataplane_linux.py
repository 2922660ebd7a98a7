"""The Linux applier (otb_agent.dataplane.linux) against a simulated kernel: it changes only what
differs from the plan, restarts a daemon only when its settings changed, follows link changes,
and reports failures as the applied-config error."""

from __future__ import annotations

import asyncio
import json

import pytest
from fakekernel import LINKS, FakeKernel, box_config
from otb_agent.dataplane.linux import (
    Applier,
    CommandError,
    LinuxDataplane,
    Supervisor,
    nft_document,
    parse_mptcp_limits,
    parse_wg_dump,
)
from otb_agent.dataplane.plan import plan_build


@pytest.fixture
def box(tmp_path):
    """A simulated kernel, a supervisor spawning into it, and an applier; the box's key enrolled."""
    state = tmp_path / "state"
    state.mkdir()
    (state / "wg_private_key").write_text("Ym94LXByaXZhdGUta2V5\n")
    kernel = FakeKernel(tmp_path / "root", {n: dict(link) for n, link in LINKS.items()})
    supervisor = Supervisor(str(state), kernel.spawner)
    applier = Applier(kernel, supervisor, root=str(tmp_path / "root"), wait_ready=lambda s: None)
    return kernel, applier, state


def apply(box, config, links=None):
    kernel, applier, state = box
    kernel.calls.clear()
    plan = plan_build(config, links or kernel.links, state_dir=str(state))
    changes = applier.converge(plan)
    return changes, kernel.changes()


def test_applying_the_same_config_twice_runs_no_changing_command(box):
    kernel, _, state = box
    changes, commands = apply(box, box_config())
    assert "ip mptcp endpoint add 10.0.1.2 dev wan1 id 1 subflow" in commands
    assert "ip mptcp endpoint add 10.0.3.2 dev wan3 id 3 subflow backup" in commands
    assert "ip mptcp limits set subflows 3 add_addr_accepted 0" in commands
    assert "ip -4 rule add pref 1000 from 10.0.1.2 table 100" in commands
    assert "ip -4 route replace default via 10.0.2.1 dev wan2 table 101" in commands
    assert "ip -4 route replace 203.0.113.10/32 proto 111 via 10.0.1.1 dev wan1" in commands
    assert "ip -4 route replace default dev otb0 table 200" in commands
    assert "ip addr add 100.64.0.1/31 dev otb0" in commands and "ip link set otb0 up" in commands
    assert "nft -f -" in commands
    assert [p.argv for p in kernel.spawned] == [
        ["wireguard-go", "-f", "otb0"],
        ["ss-redir", "-c", str(state / "ss-redir.json"), "--mptcp"],
    ]
    assert "sysctl -w net/mptcp/enabled=1" in changes and "start ss-redir -c" in " ".join(changes)
    assert json.loads((state / "ss-redir.json").read_text())["password"] == "s3cret-pw"
    assert oct((state / "ss-redir.json").stat().st_mode & 0o777) == "0o600"
    assert kernel.wg["otb0"]["peers"]["c2VydmVyLWtleS0zMi1ieXRlcy1sb25nLi4uLi4uLi4="]["endpoint"] == (
        "203.0.113.10:40001"
    )
    assert (kernel.root / "proc/sys/net/ipv4/conf/wan2/rp_filter").read_text() == "2"

    changes, commands = apply(box, box_config())
    assert changes == [] and commands == []
    assert len(kernel.spawned) == 2 and not [p for p in kernel.spawned if p.returncode is not None]


def test_a_role_change_only_touches_the_endpoint(box):
    kernel, _, _ = box
    apply(box, box_config())
    _, commands = apply(box, box_config(roles={"wan2": "backup"}))
    assert commands == ["ip mptcp endpoint change id 2 backup"]
    assert kernel.endpoints[2]["flags"] == ["subflow", "backup"]
    _, commands = apply(box, box_config(roles={"wan2": "disabled"}))
    # disabled: its endpoint, rule and table route go; the limit follows the endpoint count
    assert commands == [
        "ip -4 route del default via 10.0.2.1 dev wan2 table 101",
        "ip -4 route del unreachable default metric 4278198272 table 101",
        "ip -4 rule del pref 1001 from 10.0.2.2 table 101",
        "ip mptcp limits set subflows 2 add_addr_accepted 0",
        "ip mptcp endpoint delete id 2",
    ]
    assert len(kernel.spawned) == 2  # nothing restarted


def test_a_mode_change_touches_endpoints_and_the_server_route_only(box):
    kernel, _, _ = box
    apply(box, box_config("aggregate"))
    assert apply(box, box_config("failover")) == ([], [])  # same endpoints, same route
    _, commands = apply(box, box_config("load-balance"))
    assert commands == [
        "ip -4 route replace 203.0.113.10/32 proto 111 nexthop via 10.0.1.1 dev wan1 weight 1 "
        "nexthop via 10.0.2.1 dev wan2 weight 1",
        "ip mptcp limits set subflows 1 add_addr_accepted 0",
        "ip mptcp endpoint delete id 1",
        "ip mptcp endpoint delete id 2",
    ]
    assert apply(box, box_config("load-balance")) == ([], [])
    assert len(kernel.spawned) == 2


def test_new_credentials_restart_only_the_daemon_they_belong_to(box):
    kernel, _, _ = box
    apply(box, box_config())
    wg, ss = kernel.spawned
    config = box_config()
    config["credentials"]["shadowsocks"]["password"] = "new-password"
    _, commands = apply(box, config)
    assert commands == [] and ss.returncode == 0 and wg.returncode is None
    assert [p.argv[0] for p in kernel.running("ss-redir")] == ["ss-redir"] and len(kernel.spawned) == 3
    # a new WireGuard preshared key is set on the live interface: no restart at all
    config["credentials"]["wireguard"]["preshared_key"] = "bmV3LXBzaw=="
    _, commands = apply(box, config)
    assert len(kernel.spawned) == 3 and wg.returncode is None
    assert [c.split(" preshared-key ")[0] for c in commands] == [
        "wg set otb0 peer c2VydmVyLWtleS0zMi1ieXRlcy1sb25nLi4uLi4uLi4="
    ]


def test_port_forwards_replace_the_nft_table_keeping_its_counters(box):
    kernel, _, _ = box
    apply(box, box_config())
    kernel.nft["counters"]["redirect_up"] = (10, 12345)
    forwards = [{"proto": "udp", "port": 5353, "to_address": "192.168.50.11", "to_port": 53}]
    _, commands = apply(box, box_config(port_forwards=forwards))
    assert commands == ["nft -f -"]
    assert "udp dport 5353 dnat ip to 192.168.50.11:53" in kernel.nft["text"]
    assert kernel.nft["counters"]["redirect_up"] == (10, 12345)


async def test_a_new_static_route_keeps_its_destination_off_ss_redir(box):
    kernel, _, state = box
    dataplane = LinuxDataplane(
        state_dir=str(state), runner=kernel, spawner=kernel.spawner, root=str(kernel.root)
    )
    assert await dataplane.apply_config(box_config()) is None
    assert "10.0.0.0/8" not in kernel.nft["text"] and "192.168.50.0/24" in kernel.nft["text"]
    kernel.calls.clear()
    assert await dataplane.converge("again") is None
    assert kernel.changes() == []  # the server route and otb0's own routes do not count
    kernel.main_routes.append({"dst": "10.20.0.0/16", "gateway": "192.168.50.2", "dev": "lan0"})
    assert await dataplane.converge("routes") is None
    assert kernel.changes() == ["nft -f -"] and "10.20.0.0/16" in kernel.nft["text"]
    dataplane.supervisor.stop_all()


def test_a_link_down_moves_the_server_route_and_drops_the_endpoint_and_up_restores_them(box):
    kernel, _, _ = box
    apply(box, box_config())
    kernel.set_link("wan1", up=False, address="10.0.1.2", gateway="10.0.1.1")
    _, commands = apply(box, box_config())
    assert commands == [
        "ip -4 route replace 203.0.113.10/32 proto 111 via 10.0.2.1 dev wan2",
        "ip mptcp endpoint delete id 1",
    ]
    kernel.set_link("wan1", up=True, address="10.0.1.2", gateway="10.0.1.1")
    _, commands = apply(box, box_config())
    assert commands == [
        "ip -4 route replace default via 10.0.1.1 dev wan1 table 100",
        "ip -4 route replace 203.0.113.10/32 proto 111 via 10.0.1.1 dev wan1",
        "ip mptcp endpoint add 10.0.1.2 dev wan1 id 1 subflow",
    ]


def test_unclaiming_tears_the_tunnel_down(box):
    kernel, _, _ = box
    apply(box, box_config())
    changes, commands = apply(box, box_config(server=None, tunnel=None, public_ipv4=None))
    assert "nft delete table inet otb_box" in commands
    assert "ip -4 route del 203.0.113.10/32 proto 111" in commands
    assert "ip -4 rule del pref 2000 table 200" in commands
    assert "stop wireguard-go" in changes and "stop ss-redir" in changes
    assert (
        kernel.running("wireguard-go") == [] and kernel.running("ss-redir") == [] and "otb0" not in kernel.wg
    )
    assert kernel.nft is None and not [
        r for r in kernel.rules if r["priority"] >= 1900 and r["priority"] <= 2000
    ]
    assert len(kernel.endpoints) == 3  # the WANs stay bonded-ready


def test_a_failing_command_is_reported_naming_it(box):
    kernel, _applier, _ = box
    kernel.fail["ip mptcp endpoint add 10.0.2.2"] = "Error: address already in use"
    with pytest.raises(
        CommandError, match=r"ip mptcp endpoint add 10\.0\.2\.2 dev \.\.\.: Error: address already in use"
    ):
        apply(box, box_config())


def test_a_wireguard_go_that_dies_at_start_is_an_apply_error(box, tmp_path):
    kernel, applier, _state = box

    def dying_spawner(argv, log_path):
        proc = kernel.spawner(argv, log_path)
        if argv[0] == "wireguard-go":
            (tmp_path / "state" / "wireguard-go.log").write_text("UAPI listen error: unix socket in use\n")
            proc.die(1)
        return proc

    applier.supervisor.spawner = dying_spawner
    with pytest.raises(CommandError, match="wireguard-go did not bring up otb0: UAPI listen error"):
        apply(box, box_config())


def test_the_supervisor_restarts_a_dead_child_with_backoff():
    now = [100.0]
    procs = []

    class Proc:
        def __init__(self):
            self.code = None

        def poll(self):
            return self.code

        def terminate(self):
            self.code = 0

        def wait(self, timeout=None):
            return self.code

    def spawner(argv, log):
        procs.append(Proc())
        return procs[-1]

    sup = Supervisor("/nonexistent", spawner, clock=lambda: now[0])
    assert sup.ensure("ss-redir", ["ss-redir"], "a") is True
    assert sup.ensure("ss-redir", ["ss-redir"], "a") is False
    procs[-1].code = 1
    assert sup.poll() == []  # dead: restarted after 1 s
    now[0] += 1.0
    assert sup.poll() == ["ss-redir"] and len(procs) == 2
    procs[-1].code = 1
    now[0] += 0.5
    sup.poll()
    now[0] += 1.0
    assert sup.poll() == []  # died again soon: 2 s now
    now[0] += 1.0
    assert sup.poll() == ["ss-redir"] and len(procs) == 3
    # up for a minute: the next death waits 1 s again
    now[0] += 61
    procs[-1].code = 1
    sup.poll()
    now[0] += 1.0
    assert sup.poll() == ["ss-redir"]
    # a new fingerprint restarts a live child
    assert sup.ensure("ss-redir", ["ss-redir"], "b") is True and len(procs) == 5
    assert procs[3].code == 0 and procs[4].code is None
    sup.stop_all()
    assert procs[4].code == 0 and not sup.alive("ss-redir")


def test_parsers():
    assert parse_mptcp_limits("add_addr_accepted 0 subflows 2 \n") == {"add_addr_accepted": 0, "subflows": 2}
    dump = parse_wg_dump(
        "PRIV\tPUB\t51820\toff\nPEER\t(none)\t203.0.113.10:40001\t0.0.0.0/0,::/0\t1700000000\t10\t20\t25\n"
    )
    assert dump["private_key"] == "PRIV"
    assert dump["peers"]["PEER"] == {
        "preshared_key": None,
        "endpoint": "203.0.113.10:40001",
        "allowed_ips": ["0.0.0.0/0", "::/0"],
        "latest_handshake": 1700000000,
        "rx_bytes": 10,
        "tx_bytes": 20,
        "persistent_keepalive": 25,
    }
    text = nft_document(
        "table inet otb_box {\n\tcounter redirect_up {\n\t}\n}\n", "otb-plan x", {"redirect_up": (1, 2)}
    )
    assert text.splitlines() == [
        "table inet otb_box {",
        "}",
        "delete table inet otb_box",
        "table inet otb_box {",
        "\tcounter redirect_up {",
        "\t\tpackets 1 bytes 2",
        "\t}",
        "\tchain plan {",
        '\t\treturn comment "otb-plan x"',
        "\t}",
        "}",
    ]


async def test_the_dataplane_follows_links_and_reports_errors_as_the_apply_error(box, tmp_path):
    kernel, _, state = box
    dataplane = LinuxDataplane(
        state_dir=str(state), runner=kernel, spawner=kernel.spawner, root=str(kernel.root)
    )
    dataplane.POLL_INTERVAL = 0.02
    assert await dataplane.apply_config(box_config()) is None
    assert set(kernel.endpoints) == {1, 2, 3} and dataplane.proxy_alive()
    stop = asyncio.Event()
    watcher = asyncio.ensure_future(dataplane.run(stop))
    try:
        kernel.set_link("wan1", up=False, address="10.0.1.2", gateway="10.0.1.1")
        await wait_for(lambda: 1 not in kernel.endpoints)
        route = next(r for r in kernel.routes if r.get("protocol") == "111")
        assert route["dev"] == "wan2"
        kernel.set_link("wan1", up=True, address="10.0.1.2", gateway="10.0.1.1")
        await wait_for(lambda: 1 in kernel.endpoints)
        assert next(r for r in kernel.routes if r.get("protocol") == "111")["dev"] == "wan1"
        # a child that dies is restarted, and the tunnel it carried is configured again
        kernel.running("wireguard-go")[0].die(1)
        await wait_for(
            lambda: kernel.running("wireguard-go") and "100.64.0.1/31" in kernel.addrs.get("otb0", []), 5
        )
        # a config that cannot be planned is the apply error, naming the field
        error = await dataplane.apply_config(box_config(public_ipv4="nope"))
        assert error == "public_ipv4: must be an IPv4 address (got 'nope')"
    finally:
        stop.set()
        await asyncio.wait_for(watcher, 5)
    assert kernel.running("wireguard-go") == [] and kernel.running("ss-redir") == []  # stopped on exit


async def wait_for(pred, timeout=3.0):
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not pred():
        assert loop.time() < end, "condition not met in time"
        await asyncio.sleep(0.02)
