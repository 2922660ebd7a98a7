"""The real gateway on a real kernel: in a network namespace of its own (``otbgwt-<pid>``, removed
afterwards even on failure), against a fake backend serving two peers, with real wireguard-go,
ss-server, nftables and iproute2. Needs root and the Debian packages wireguard-go, wireguard-tools,
shadowsocks-libev, nftables (docs/gateway.md); without them it fails, it does not skip.

wireguard-go and wg talk over /run/wireguard/otbgw0.sock, which is shared by every network namespace
of the machine; the gateway under test therefore runs with a private /run (``unshare -m`` + tmpfs),
and the test looks at it through the mount and network namespaces of its wireguard-go (``nsenter``).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.gateway.peerdata import box_id, key, peer

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

GATEWAY = str(Path(sys.executable).with_name("otb-gateway"))
FAKE_BACKEND = str(Path(__file__).with_name("fakepeers.py"))
TOOLS = ("ip", "nft", "wg", "wireguard-go", "ss-server", "ss", "unshare", "nsenter")


@dataclass
class Lab:
    ns: str
    directory: Path  # the fake backend's files
    state: Path
    url: str

    def write_peers(self, peers: list[dict]) -> None:
        (self.directory / "peers.json").write_text(json.dumps(peers))

    def wg_pid(self) -> int:
        return int(json.loads((self.state / "run" / "wireguard-go.pid").read_text())["pid"])

    def inside(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` where the gateway's wireguard-go runs (its network and mount namespaces)."""
        return subprocess.run(
            ["nsenter", "-t", str(self.wg_pid()), "-m", "-n", *argv],
            capture_output=True,
            text=True,
            timeout=60,
            check=check,
        )

    def gateway_args(self) -> list[str]:
        return [
            GATEWAY,
            "--server",
            self.url,
            "--token-file",
            str(self.directory / "token"),
            "--state-dir",
            str(self.state),
            "--upstream",
            "up0",
            "--once",
        ]

    def ss_pid(self, n: int) -> int | None:
        path = self.state / "run" / f"ss-{box_id(n)}.pid"
        return json.loads(path.read_text())["pid"] if path.exists() else None


def _sh(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True, timeout=30)


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    assert not missing, f"install the gateway's packages (docs/gateway.md); missing: {missing}"
    assert os.geteuid() == 0, "the gateway's kernel test needs root (network namespaces, nftables)"
    ns = f"otbgwt-{os.getpid()}"
    directory, state = tmp_path / "backend", tmp_path / "state"
    directory.mkdir()
    (directory / "token").write_text("otbs_kernel_test\n")
    _sh("ip", "netns", "add", ns)
    backend = None
    try:
        for command in (
            "ip link set lo up",
            "ip link add up0 type veth peer name up0p",
            "ip addr add 198.51.100.2/24 dev up0",
            "ip link set up0 up",
            "ip link set up0p up",
            "ip route add default via 198.51.100.1",
        ):
            _sh("ip", "netns", "exec", ns, *command.split())
        backend = subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, FAKE_BACKEND, "--dir", str(directory)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 20
        while not (directory / "port").exists():
            assert backend.poll() is None and time.monotonic() < deadline, "the fake backend did not start"
            time.sleep(0.05)
        yield Lab(
            ns=ns,
            directory=directory,
            state=state,
            url=f"http://127.0.0.1:{(directory / 'port').read_text()}",
        )
    finally:
        # Everything the test started lives in the namespace: the fake backend, wireguard-go, the
        # ss-servers and the test's client. Stop them, then remove the namespace.
        if backend is not None:
            backend.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                backend.wait(timeout=5)
        pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True, check=False).stdout
        for pid in pids.split():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)
        subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)


def test_the_gateway_configures_two_boxes_and_removes_one_leaving_the_other_untouched(lab: Lab) -> None:
    # given a backend with eight boxes (box 0 with rate limits): enough for the gateway to hand the
    # kernel its addresses, routes and peers in batches (ip -batch, wg addconf)
    lab.write_peers(
        [peer(0, rate_limit={"download_kbps": 20000, "upload_kbps": 10000}), *map(peer, range(1, 8))]
    )

    # when the gateway runs once in the namespace, with a /run of its own
    first = subprocess.run(
        [
            "ip",
            "netns",
            "exec",
            lab.ns,
            "unshare",
            "-m",
            "sh",
            "-c",
            'mount -t tmpfs none /run && exec "$@"',
            "-",
            *lab.gateway_args(),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )

    # then it exits 0, and the kernel holds both boxes
    assert first.returncode == 0, first.stdout + first.stderr
    wg = lab.inside("wg", "show", "otbgw0", "dump").stdout.splitlines()
    own_key = lab.inside("wg", "show", "otbgw0", "public-key").stdout.strip()
    assert wg[0].split("\t")[2] == "51819"
    peers = {line.split("\t")[0]: line.split("\t") for line in wg[1:]}
    assert set(peers) == {key(f"box-{n}") for n in range(8)}
    assert peers[key("box-0")][1] == key("psk-0")
    assert sorted(peers[key("box-1")][3].split(",")) == [
        "100.64.0.3/32",
        "2001:db8:1::/56",
        "203.0.113.11/32",
    ]
    table = lab.inside("nft", "list", "table", "inet", "otb_gateway").stdout
    assert "fib daddr type local udp dport @box_ports redirect to :51819" in table
    assert "elements = { 51820, 51821, 51822, 51823, 51824, 51825, 51826, 51827 }" in " ".join(table.split())
    assert "100.64.0.2 : 203.0.113.11" in table and "100.64.0.3 : 203.0.113.11" in table
    assert "rate over 2500000 bytes/second burst 250000 bytes" in table
    listening = lab.inside("ss", "-Hltn").stdout
    assert "0.0.0.0:51820" in listening and "0.0.0.0:51821" in listening
    assert "0.0.0.0:51820" in lab.inside("ss", "-HlnM").stdout  # the ss-servers speak MPTCP
    addresses = lab.inside("ip", "-br", "addr", "show", "dev", "otbgw0").stdout
    assert all(f"100.64.0.{2 * n}/31" in addresses for n in range(8))
    routes = lab.inside("ip", "route", "show", "dev", "otbgw0").stdout
    assert "203.0.113.10 proto static" in routes and "203.0.113.11 proto static" in routes
    assert "2001:db8:1::/56" in lab.inside("ip", "-6", "route", "show", "dev", "otbgw0").stdout
    assert lab.inside("sysctl", "-n", "net.ipv4.ip_forward").stdout.strip() == "1"
    assert "subflows 8" in lab.inside("ip", "mptcp", "limits", "show").stdout
    # and it reported to the backend with its public key and both boxes
    (report,) = [json.loads(line) for line in (lab.directory / "reports.jsonl").read_text().splitlines()]
    assert report["wg_public_key"] == own_key and report["peers"] == 8 and report["converge_errors"] == 0
    assert {row["box_id"] for row in report["boxes"]} == {box_id(n) for n in range(8)}

    # given a client holding a TCP connection to box 0's ss-server
    client = subprocess.Popen(
        [
            "nsenter",
            "-t",
            str(lab.wg_pid()),
            "-n",
            sys.executable,
            "-c",
            "import socket,sys,time\n"
            "s=socket.create_connection(('198.51.100.2',51820))\n"
            "s.sendall(b'x'); print('ok', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert client.stdout is not None and client.stdout.readline().strip() == "ok"
        box0_ss, box0_wg_peer = lab.ss_pid(0), peers[key("box-0")]
        assert box0_ss is not None

        # when box 1 leaves the list and the gateway runs again (a new process: it adopts the children)
        lab.write_peers(
            [peer(0, rate_limit={"download_kbps": 20000, "upload_kbps": 10000}), *map(peer, range(2, 8))]
        )
        second = lab.inside(*lab.gateway_args(), check=False)

        # then box 1's pieces are gone ...
        assert second.returncode == 0, second.stdout + second.stderr
        assert "child_adopted" in second.stderr
        wg = lab.inside("wg", "show", "otbgw0", "dump").stdout.splitlines()
        assert {line.split("\t")[0] for line in wg[1:]} == {key(f"box-{n}") for n in range(8) if n != 1}
        table = lab.inside("nft", "list", "table", "inet", "otb_gateway").stdout
        assert object_name(1) not in table and "203.0.113.11" not in table and "51821" not in table
        listening = lab.inside("ss", "-Hltn").stdout
        assert "0.0.0.0:51821" not in listening
        assert "100.64.0.2/31" not in lab.inside("ip", "-br", "addr", "show", "dev", "otbgw0").stdout
        assert "203.0.113.11" not in lab.inside("ip", "route", "show", "dev", "otbgw0").stdout
        assert "2001:db8:1::" not in lab.inside("ip", "-6", "route", "show", "dev", "otbgw0").stdout
        # ... and box 0 kept its ss-server (same process), its connection, its peer and its elements
        assert lab.ss_pid(0) == box0_ss and "0.0.0.0:51820" in listening
        assert (
            next(line for line in wg[1:] if line.startswith(key("box-0"))).split("\t")[:4] == box0_wg_peer[:4]
        )
        assert object_name(0) in table and "100.64.0.0 : 203.0.113.10" in table
        assert client.poll() is None
        # and the report counts the client's connection and bytes on box 0
        last = json.loads((lab.directory / "reports.jsonl").read_text().splitlines()[-1])
        row = next(row for row in last["boxes"] if row["box_id"] == box_id(0))
        assert row["connections"] == 1 and row["rx_bytes"] > 0 and len(last["boxes"]) == 7
    finally:
        client.kill()
        client.wait()

    # when the gateway cleans up, nothing of it is left
    pid = lab.wg_pid()
    cleanup = subprocess.run(
        ["nsenter", "-t", str(pid), "-m", "-n", GATEWAY, "--state-dir", str(lab.state), "--cleanup"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert cleanup.returncode == 0, cleanup.stderr
    check = subprocess.run(
        ["ip", "netns", "exec", lab.ns, "sh", "-c", "ip link show otbgw0; nft list tables; ss -Hltn"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert "otb_gateway" not in check.stdout and "51820" not in check.stdout
    assert 'Device "otbgw0" does not exist' in check.stderr


def object_name(n: int) -> str:
    return "b" + box_id(n).replace("-", "")
