"""The real agent applies the box's data plane to a real kernel, in network namespaces this test makes
(prefix ``otbbxt-``, removed afterwards even on failure): a box with two veth WANs to a peer.

``otb-agent run --apply linux`` starts from a saved config.json (its fleet server is unreachable: the
data plane does not wait for it). The server side is not built here: the test checks the box's
kernel state (MPTCP endpoints and limits, rules, routes, the nft table, the WireGuard interface,
ss-redir listening), then cuts a WAN and sees its endpoint and the server route move, and back.
Runs as root (CI does); without root it fails rather than skips, like the lab.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
import uuid

import pytest
from fakekernel import box_config
from otb_agent import x25519

SERVER_IP = "10.241.9.1"
# A TCP listener on every address of its namespace that holds each connection open.
HOLD_LISTENER = """
import socket, threading
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 7777)); s.listen(); print("listening", flush=True)
held = []
while True:
    held.append(s.accept()[0])
"""
# Connects from argv[1] to argv[2:] (port 7777), says "connected", then "closed <peer>" for each
# connection that ends (by reset, abort or close).
HOLD_CLIENT = """
import socket, sys, threading
def hold(conn, peer):
    try:
        conn.recv(1)
    except OSError:
        pass
    print("closed", peer, flush=True)
conns = []
for peer in sys.argv[2:]:
    c = socket.create_connection((peer, 7777), timeout=5, source_address=(sys.argv[1], 0))
    c.settimeout(None)
    conns.append(threading.Thread(target=hold, args=(c, peer)))
print("connected", flush=True)
for t in conns:
    t.start()
for t in conns:
    t.join()
"""


def sh(*argv: str, check: bool = True) -> str:
    p = subprocess.run(list(argv), capture_output=True, text=True, timeout=30, check=False)
    if check and p.returncode != 0:
        raise AssertionError(f"{' '.join(argv)}: {p.stderr.strip()}")
    return p.stdout


def wait_for(pred, timeout: float, what: str):
    end = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"not within {timeout:g}s: {what}")
        time.sleep(0.05)


@pytest.fixture
def lab():
    """Box and peer namespaces: box wan1/wan2 (10.241.1.2, 10.241.2.2) to the peer's gateways
    (.1), a LAN interface, default routes in the box's main table as DHCP would leave them, and the
    aggregation server's address on the peer."""
    tag = uuid.uuid4().hex[:6]
    box, peer = f"otbbxt-{tag}-box", f"otbbxt-{tag}-peer"
    try:
        sh("ip", "netns", "add", box)
        sh("ip", "netns", "add", peer)
        for i in (1, 2):
            sh(
                "ip",
                "link",
                "add",
                f"wan{i}",
                "netns",
                box,
                "type",
                "veth",
                "peer",
                "name",
                f"p{i}",
                "netns",
                peer,
            )
            sh("ip", "-n", box, "addr", "add", f"10.241.{i}.2/24", "dev", f"wan{i}")
            sh("ip", "-n", peer, "addr", "add", f"10.241.{i}.1/24", "dev", f"p{i}")
            sh("ip", "-n", box, "link", "set", f"wan{i}", "up")
            sh("ip", "-n", peer, "link", "set", f"p{i}", "up")
            sh(
                "ip",
                "-n",
                box,
                "route",
                "add",
                "default",
                "via",
                f"10.241.{i}.1",
                "dev",
                f"wan{i}",
                "metric",
                f"{i}0",
            )
        sh(
            "ip",
            "link",
            "add",
            "lan0",
            "netns",
            box,
            "type",
            "veth",
            "peer",
            "name",
            "lanpeer",
            "netns",
            peer,
        )
        sh("ip", "-n", box, "addr", "add", "192.168.241.1/24", "dev", "lan0")
        sh("ip", "-n", box, "link", "set", "lan0", "up")
        sh("ip", "-n", box, "link", "set", "lo", "up")
        sh("ip", "-n", peer, "link", "set", "lo", "up")
        sh("ip", "-n", peer, "addr", "add", f"{SERVER_IP}/32", "dev", "lo")
        yield box, peer, f"otbbxt{tag}"
    finally:
        for ns in (box, peer):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)


def box_state(tmp_path, tunnel: str):
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    priv, _ = x25519.generate_keypair_b64()
    (state / "wg_private_key").write_text(priv + "\n")
    (state / "credentials.json").write_text(
        json.dumps(
            {"agent_token": "otba_test", "server": "http://127.0.0.1:9", "serial": "BOX1", "box_id": "b1"}
        )
    )
    config = box_config(
        "aggregate",
        port_forwards=[{"proto": "tcp", "port": 8080, "to_address": "192.168.241.10", "to_port": 80}],
    )
    config["server"]["public_ipv4"] = SERVER_IP
    config["wan_policy"]["interfaces"] = [
        {"name": "wan1", "role": "primary", "kind": "fiber"},
        {"name": "wan2", "role": "primary", "kind": "lte"},
    ]
    (state / "config.json").write_text(json.dumps(config))
    return state


def test_the_agent_configures_a_real_kernel_and_follows_a_cut_link(lab, tmp_path):
    box, peer, tunnel = lab
    state = box_state(tmp_path, tunnel)
    log = (tmp_path / "agent.log").open("wb")
    agent = subprocess.Popen(
        ["ip", "netns", "exec", box, sys.executable, "-m", "otb_agent.cli", "run", "--state-dir", str(state),
         "--apply", "linux", "--tunnel-iface", tunnel, "--no-probe", "--collector", "linux"],
        stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip

    def ipj(*argv: str):
        return json.loads(sh("ip", "-n", box, "-j", *argv) or "[]")

    def endpoints():
        return {
            ep["id"]: (ep["address"], ep["dev"], bool(ep.get("subflow")))
            for ep in ipj("mptcp", "endpoint", "show")
        }

    def server_dev():
        routes = ipj("-4", "route", "show", f"{SERVER_IP}/32")
        return routes[0].get("dev") if routes else None

    try:
        wait_for(lambda: len(endpoints()) == 2 and server_dev(), 20, "the data plane applied")
        assert endpoints() == {1: ("10.241.1.2", "wan1", True), 2: ("10.241.2.2", "wan2", True)}
        assert "subflows 2" in sh("ip", "-n", box, "mptcp", "limits", "show")
        route = ipj("-4", "route", "show", f"{SERVER_IP}/32")[0]
        assert (route["gateway"], route["dev"], route["protocol"]) == ("10.241.1.1", "wan1", "111")
        rules = {(r["priority"], r.get("src"), r.get("iif"), r["table"]) for r in ipj("-4", "rule", "show")}
        assert {(1000, "10.241.1.2", None, "100"), (1001, "10.241.2.2", None, "101")} <= rules
        assert {(1950, "all", "lo", "main"), (2000, "all", None, "200")} <= rules
        table100 = ipj("-4", "route", "show", "table", "100")
        assert {"dst": "default", "gateway": "10.241.1.1", "dev": "wan1"}.items() <= table100[0].items()
        assert ipj("-4", "route", "show", "table", "200")[0]["dev"] == tunnel
        addrs = {a["local"] for a in ipj("-4", "addr", "show", "dev", tunnel)[0]["addr_info"]}
        assert addrs == {"100.64.0.1", "198.51.100.5"}
        nft = sh("ip", "netns", "exec", box, "nft", "list", "table", "inet", "otb_box")
        assert "redirect to :11080" in nft and "dnat ip to 192.168.241.10:80" in nft
        # LAN TCP goes to ss-redir unless a main-table route of its own covers the destination
        redirect = next(line for line in nft.splitlines() if "redirect to" in line)
        for direct in ("10.241.1.0-10.241.2.255", "192.168.241.0/24", "100.64.0.0/31"):  # nft merges
            assert direct in redirect
        assert "10.0.0.0/8" not in redirect and SERVER_IP not in redirect
        assert f'oifname "{tunnel}" ip saddr != 198.51.100.5 snat ip to 198.51.100.5' in nft
        wg = sh("ip", "netns", "exec", box, "wg", "show", tunnel, "endpoints")
        assert f"{SERVER_IP}:40001" in wg
        wait_for(lambda: ":11080" in sh("ip", "netns", "exec", box, "ss", "-ltnH"), 5, "ss-redir listening")
        assert sh("ip", "netns", "exec", box, "sysctl", "-n", "net.ipv4.conf.all.rp_filter").strip() == "2"

        # the box's own TCP connections leaving by wan1: one to an internet host, one to the server
        listener = subprocess.Popen(
            ["ip", "netns", "exec", peer, sys.executable, "-c", HOLD_LISTENER],
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert listener.stdout is not None and listener.stdout.readline().strip() == "listening"
        client = subprocess.Popen(
            ["ip", "netns", "exec", box, sys.executable, "-c", HOLD_CLIENT,
             "10.241.1.2", "10.241.1.1", SERVER_IP],
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert client.stdout is not None and client.stdout.readline().strip() == "connected"
        try:
            # cut wan1 (its peer goes down: the box loses the carrier)
            sh("ip", "-n", peer, "link", "set", "p1", "down")
            wait_for(
                lambda: 1 not in endpoints() and server_dev() == "wan2", 2, "endpoint 1 gone, route via wan2"
            )
            assert endpoints() == {2: ("10.241.2.2", "wan2", True)}
            # the stranded connection is reset at once (not left to hang on the dead link); the one to
            # the aggregation server is left to MPTCP
            ready, _, _ = select.select([client.stdout], [], [], 3)
            assert ready, "the stranded connection was still open 3 s after the cut"
            assert client.stdout.readline().strip() == "closed 10.241.1.1"
            time.sleep(0.5)
            assert client.poll() is None, "the connection to the server was reset too"
        finally:
            client.kill()
            listener.kill()
            client.wait()
            listener.wait()
        # restore it: routes and endpoint come back
        sh("ip", "-n", peer, "link", "set", "p1", "up")
        wait_for(lambda: 1 in endpoints() and server_dev() == "wan1", 2, "endpoint 1 and route via wan1 back")
        assert ipj("-4", "route", "show", "table", "100", "default")[0]["gateway"] == "10.241.1.1"
        # the box's own side of the WAN going down (admin down flushes its routes, main's too)
        sh("ip", "-n", box, "link", "set", "wan2", "down")
        wait_for(lambda: 2 not in endpoints(), 2, "endpoint 2 gone")
        sh("ip", "-n", box, "link", "set", "wan2", "up")
        wait_for(lambda: 2 in endpoints(), 3, "endpoint 2 back (gateway remembered)")
        assert ipj("-4", "route", "show", "table", "101", "default")[0]["gateway"] == "10.241.2.1"
    finally:
        agent.send_signal(signal.SIGTERM)
        try:
            agent.wait(timeout=15)
        finally:
            if agent.poll() is None:
                agent.kill()
            log.close()
    # a clean stop takes the daemons down: wireguard-go's interface is gone, nothing on 11080
    output = (tmp_path / "agent.log").read_text()
    assert sh("ip", "-n", box, "link", "show", tunnel, check=False) == "", output
    assert ":11080" not in sh("ip", "netns", "exec", box, "ss", "-ltnH"), output
