"""The lab, assembled: links, the backend, an aggregation server running otb-gateway, boxes running
otb-agent, each box imported, enrolled by the agent, claimed and configured through the API.

Used by ``make lab`` (``python -m netlab``), by the lab tests and by the ``lab`` benchmark."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from netlab.backend import ROOT, Api, Backend
from netlab.netns import LabError, run
from netlab.topology import (
    INET_ADDRESS,
    IPV6_POOL,
    LAN_CLIENT,
    PUBLIC_POOL,
    SERVER_ADDRESS,
    TUNNEL_POOL,
    Topology,
    Wan,
)

#: Debian packages the lab runs (binary -> package); installed by ``ensure_packages``.
PACKAGES = {
    "ss-server": "shadowsocks-libev",
    "mptcpize": "mptcpd",
    "wireguard-go": "wireguard-go",
    "wg": "wireguard-tools",
    "nft": "nftables",
    "iperf3": "iperf3",
    "ping": "iputils-ping",
    "tc": "iproute2",
    "conntrack": "conntrack",
}
BIN = Path(sys.executable).parent
PEER_PORT = 7007
PEER = Path(__file__).resolve().parent / "peer.py"


def log(message: str) -> None:
    print(f"lab: {message}", file=sys.stderr, flush=True)


def ensure_packages(packages: dict[str, str] | None = None) -> None:
    """Install the Debian packages (binary -> package; the lab's by default) that are missing (apt, as
    root)."""
    wanted = PACKAGES if packages is None else packages
    missing = sorted({package for binary, package in wanted.items() if shutil.which(binary) is None})
    if not missing:
        return
    if os.geteuid() != 0:
        raise LabError(f"the lab needs root to install {', '.join(missing)}")
    log(f"installing {' '.join(missing)}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", *missing]):
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, check=False)
        if done.returncode != 0:
            raise LabError(f"{' '.join(command)}: {done.stderr.strip()[-500:]}")


def wait_for(check: Callable[[], Any], timeout: float, what: str, interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except (LabError, OSError, ValueError, KeyError) as error:
            last = error
        else:
            if last:
                return last
        time.sleep(interval)
    raise LabError(f"timed out after {timeout:g} s waiting for {what} (last: {last!r})")


@dataclass
class LabBox:
    role: str  # its namespace role: "box" or "box2"
    lan: str  # the namespace role of its LAN client
    factory: dict[str, str]
    state_dir: Path
    box_id: str = ""
    agent: subprocess.Popen | None = None

    @property
    def tunnel(self) -> str:
        """Its WireGuard interface: otb0, otb1, ..."""
        return "otb0" if self.role == "box" else f"otb{self.role.removeprefix('box') or 0}"

    @property
    def serial(self) -> str:
        return self.factory["serial"]


@dataclass
class Lab:
    prefix: str = "otblab"
    links: int = 2
    link_mbps: float = 20.0
    second_box: bool = False
    env: dict[str, str] = field(default_factory=lambda: dict(os.environ))
    workdir: Path = ROOT / "var" / "lab"
    telemetry_interval_s: int = 2
    topo: Topology = field(init=False)
    backend: Backend = field(init=False)
    boxes: list[LabBox] = field(default_factory=list)
    gateway: subprocess.Popen | None = None
    staff: Api | None = None
    owner: Api | None = None
    organization: str = ""
    server: dict[str, Any] = field(default_factory=dict)
    peer: subprocess.Popen | None = None

    def __post_init__(self) -> None:
        self.topo = Topology(
            self.prefix, links=self.links, link_mbps=self.link_mbps, second_box=self.second_box
        )
        self.env = {
            **self.env,
            "DJANGO_SETTINGS_MODULE": "config.settings",
            "OTB_TELEMETRY_INTERVAL_S": str(self.telemetry_interval_s),
            "LOG_LEVEL": self.env.get("LOG_LEVEL", "WARNING"),
            "PYTHONUNBUFFERED": "1",
        }
        self.backend = Backend(self.topo.ns.name("ctl"), self.env, self.workdir / "logs")

    # -- life cycle ---------------------------------------------------------------------------------

    def up(self) -> None:
        ensure_packages()
        if self.workdir.exists():
            shutil.rmtree(self.workdir)
        self.workdir.mkdir(parents=True)
        log(f"links: {self.links} x {self.link_mbps:g} Mbit/s; namespaces {self.prefix}-*")
        self.topo.build()
        self.peer = self.peer_server()
        self.backend.start()
        log(f"backend at {self.backend.url} (listening in {self.prefix}-ctl only)")
        people = json.loads(
            subprocess.check_output(
                [sys.executable, "-m", "netlab.bootstrap", str(2 if self.second_box else 1)],
                cwd=ROOT,
                env=self.env,
                text=True,
            )
        )
        # The operator and the customer use the API from a host on the internet.
        inet = self.topo.ns.name("inet")
        self.staff = Api(self.backend.url, inet, people["staff_token"])
        self.owner = Api(self.backend.url, inet, people["owner_token"])
        self.organization = people["organization"]
        self._infrastructure()
        self._start_gateway()
        roles = [("box", "lan"), ("box2", "lan2")][: 2 if self.second_box else 1]
        for (role, lan), factory in zip(roles, people["boxes"], strict=False):
            box = LabBox(role=role, lan=lan, factory=factory, state_dir=self.workdir / role)
            self.boxes.append(box)
            self._enroll_and_run(box)
            self._claim(box)
        for box in self.boxes:
            self.wait_ready(box)
        log("data plane up")

    def down(self) -> None:
        for box in self.boxes:
            _stop(box.agent)
        _stop(self.gateway)
        _stop(self.peer)
        self.backend.stop()
        self.topo.cleanup()

    def __enter__(self) -> Lab:
        try:
            self.up()
        except BaseException:
            self.down()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.down()

    # -- set-up through the API -------------------------------------------------------------------

    def _infrastructure(self) -> None:
        assert self.staff is not None
        region = self.staff.post("/api/v1/regions/", {"code": f"lab-{self.prefix}", "name": "Lab"})
        self.server = self.staff.post(
            "/api/v1/servers/",
            {
                "name": f"{self.prefix}-agg-1",
                "region": region["id"],
                "hostname": SERVER_ADDRESS,
                "public_ipv4": SERVER_ADDRESS,
                "capacity": 10,
            },
        )
        for name, cidr, purpose, length in (
            ("public", PUBLIC_POOL, "public_ipv4", None),
            ("tunnel", TUNNEL_POOL, "tunnel_p2p", 31),
            ("ipv6", IPV6_POOL, "ipv6_prefix", 56),
        ):
            body: dict[str, Any] = {"name": f"{self.prefix}-{name}", "cidr": cidr, "purpose": purpose}
            body["region"] = region["id"]
            if length:
                body["prefix_length"] = length
            self.staff.post("/api/v1/pools/", body)

    def _start_gateway(self) -> None:
        state = self.workdir / "gateway"
        state.mkdir(parents=True)
        token_file = state / "token"
        token_file.write_text(self.server["token"])
        token_file.chmod(0o600)
        self._start_gateway_process(state)

    def _start_gateway_process(self, state: Path) -> None:
        command = [
            str(BIN / "otb-gateway"),
            "--server", self.backend.url,
            "--token-file", str(state / "token"),
            "--state-dir", str(state),
            "--upstream", "eth0",
        ]  # fmt: skip
        with (self.workdir / "logs" / "gateway.log").open("ab") as out:
            self.gateway = self.topo.ns.popen("srv", command, stdout=out, stderr=subprocess.STDOUT)

    def _enroll_and_run(self, box: LabBox) -> None:
        box.state_dir.mkdir(parents=True)
        agent = str(BIN / "otb-agent")
        factory = box.factory
        self.topo.ns.exec(
            box.role, agent, "--state-dir", str(box.state_dir), "enroll",
            "--server", self.backend.url, "--serial", factory["serial"],
            "--secret", factory["factory_secret"], "--mac", factory["mac"], "--model", factory["model"],
        )  # fmt: skip
        # wireguard-go's control socket (/run/wireguard/<name>.sock) is shared by every namespace of
        # the host: each box of the lab needs its own tunnel interface name.
        command = [
            agent, "--state-dir", str(box.state_dir), "run",
            "--collector", "linux", "--apply", "linux", "--probe-count", "1", "--tunnel-iface", box.tunnel,
        ]  # fmt: skip
        with (self.workdir / "logs" / f"agent-{box.role}.log").open("ab") as out:
            box.agent = self.topo.ns.popen(box.role, command, stdout=out, stderr=subprocess.STDOUT)

    def _claim(self, box: LabBox) -> None:
        assert self.owner is not None
        claimed = self.owner.post(
            "/api/v1/boxes/claim",
            {
                "serial": box.serial,
                "claim_code": box.factory["claim_code"],
                "organization": self.organization,
            },
        )
        box.box_id = claimed["id"]
        self.set_policy(box, "aggregate", {wan.name: "primary" for wan in self.topo.wans_of(box.role)})

    def set_policy(self, box: LabBox, mode: str, roles: dict[str, str], wait: bool = True) -> None:
        assert self.owner is not None
        interfaces = [{"name": name, "role": role, "kind": "other"} for name, role in roles.items()]
        self.owner.put(f"/api/v1/boxes/{box.box_id}/wan-policy", {"mode": mode, "interfaces": interfaces})
        if wait:
            self.wait_applied(box)

    def box_detail(self, box: LabBox) -> dict[str, Any]:
        assert self.owner is not None
        detail: dict[str, Any] = self.owner.get(f"/api/v1/boxes/{box.box_id}/")
        return detail

    def wait_applied(self, box: LabBox, timeout: float = 90) -> dict[str, Any]:
        def applied() -> dict[str, Any] | None:
            detail = self.box_detail(box)
            if detail.get("apply_error"):
                raise LabError(f"{box.role} failed to apply its config: {detail['apply_error']}")
            if detail.get("config_hash") and detail.get("applied_config_hash") == detail["config_hash"]:
                return detail
            return None

        result: dict[str, Any] = wait_for(applied, timeout, f"{box.role} to apply its configuration")
        return result

    def wait_ready(self, box: LabBox, timeout: float = 60) -> None:
        self.wait_applied(box, timeout)
        wait_for(lambda: self.tcp_peer(box), timeout, f"TCP from {box.lan} through the tunnel")

    # -- what the internet sees -------------------------------------------------------------------

    def public_ip(self, box: LabBox) -> str:
        address: str = self.box_detail(box)["public_ipv4"]
        return address

    def peer_server(self) -> subprocess.Popen:
        """A TCP and UDP echo of the caller's address on the internet host (port 7007)."""
        return self.topo.ns.popen(
            "inet", [sys.executable, str(PEER), "serve", str(PEER_PORT)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip

    def tcp_peer(self, box: LabBox, timeout: float = 3) -> str:
        """The source address the internet host sees for TCP from the box's LAN ('' if none)."""
        out = self.topo.ns.exec(
            box.lan, sys.executable, str(PEER), "tcp", INET_ADDRESS, str(PEER_PORT), str(timeout),
            check=False, timeout=timeout + 5,
        )  # fmt: skip
        return out.strip().split(":")[0] if out.strip() else ""

    def udp_peer(self, box: LabBox, timeout: float = 3) -> str:
        out = self.topo.ns.exec(
            box.lan, sys.executable, str(PEER), "udp", INET_ADDRESS, str(PEER_PORT), str(timeout),
            check=False, timeout=timeout + 5,
        )  # fmt: skip
        return out.strip().split(":")[0] if out.strip() else ""

    # -- traffic ------------------------------------------------------------------------------------

    def iperf(
        self, box: LabBox, seconds: float, *, interval: float = 0.1, during: Callable[[], None] | None = None
    ) -> dict[str, Any]:
        """A TCP transfer from the box's LAN client to the internet host; the receiver's (the
        internet host's) report: ``{"mbps", "intervals": [(start, mbps)], "source"}``."""
        server = self.topo.ns.popen(
            "inet", ["iperf3", "-s", "-1", "-J", "-i", str(interval), "-p", "5201"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )  # fmt: skip
        try:
            wait_for(lambda: "5201" in self.topo.ns.exec("inet", "ss", "-ltn"), 5, "iperf3 server")
            client = self.topo.ns.popen(
                box.lan, ["iperf3", "-c", INET_ADDRESS, "-t", str(seconds), "-J", "-p", "5201"],
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
            )  # fmt: skip
            if during is not None:
                during()
            client.communicate(timeout=seconds + 30)
            out, _ = server.communicate(timeout=30)
        finally:
            _stop(server)
        report = json.loads(out)
        if "error" in report:
            raise LabError(f"iperf3: {report['error']}")
        intervals = [
            (round(item["sum"]["start"], 3), item["sum"]["bits_per_second"] / 1e6)
            for item in report["intervals"]
        ]
        return {
            "mbps": report["end"]["sum_received"]["bits_per_second"] / 1e6,
            "intervals": intervals,
            "source": report["start"]["connected"][0]["remote_host"],
        }

    def wan_tx_bytes(self, box: LabBox) -> dict[str, int]:
        out = {}
        for wan in self.topo.wans_of(box.role):
            text = self.topo.ns.exec(box.role, "cat", f"/sys/class/net/{wan.name}/statistics/tx_bytes")
            out[wan.name] = int(text.strip())
        return out

    def cut(self, wan: Wan) -> None:
        self.topo.cut(wan)

    def restore(self, wan: Wan) -> None:
        self.topo.restore(wan)

    def gateway_state(self) -> dict[str, str]:
        ns = self.topo.ns
        return {
            "wg": ns.exec("srv", "wg", "show", "otbgw0", "dump", check=False),
            "nft": ns.exec("srv", "nft", "list", "table", "inet", "otb_gateway", check=False),
            "listen": ns.exec("srv", "ss", "-ltnH"),
            "routes": ns.exec("srv", "ip", "route", "show"),
        }


def _stop(process: subprocess.Popen | None) -> None:
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(5)


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds of these processes (gone ones count 0)."""
    total = 0.0
    ticks = os.sysconf("SC_CLK_TCK")
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / ticks
    return total


def namespace_pids(lab: Lab, role: str) -> list[int]:
    out = run(["ip", "netns", "pids", lab.topo.ns.name(role)], check=False)
    return [int(pid) for pid in out.split() if pid.isdigit()]


LAN_CLIENTS = LAN_CLIENT
