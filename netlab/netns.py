"""Network namespaces, veth links and shaping for the lab, through iproute2 and nftables.

Every namespace the lab makes is named ``<prefix>-<role>``; ``Namespaces.cleanup`` kills what runs
in them and deletes them (also the leftovers of an earlier run that died), so the host keeps none of
it. Nothing here touches the host's own namespace: links are created directly between two lab
namespaces, addresses and routes only exist inside them."""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

NETNS_DIR = Path("/var/run/netns")
CLONE_NEWNET = 0x40000000


class LabError(RuntimeError):
    """A lab command failed; the message holds the command and what it printed."""


def run(command: Sequence[str], *, check: bool = True, timeout: float = 30, input: str | None = None) -> str:
    """Run a command; its stdout, or LabError with its stderr when it fails and ``check``."""
    done = subprocess.run(
        list(command), capture_output=True, text=True, timeout=timeout, input=input, check=False
    )
    if check and done.returncode != 0:
        raise LabError(
            f"{' '.join(command)} -> {done.returncode}: {done.stderr.strip() or done.stdout.strip()}"
        )
    return done.stdout


def netns_list() -> list[str]:
    return sorted(path.name for path in NETNS_DIR.glob("*")) if NETNS_DIR.is_dir() else []


def netns_pids(name: str) -> list[int]:
    out = run(["ip", "netns", "pids", name], check=False)
    return [int(pid) for pid in out.split() if pid.isdigit()]


@contextmanager
def inside(name: str) -> Iterator[None]:
    """Run the body with this thread in namespace ``name`` (sockets made there stay there)."""
    libc = ctypes.CDLL(None, use_errno=True)
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(str(NETNS_DIR / name), os.O_RDONLY)
    try:
        if libc.setns(target, CLONE_NEWNET) != 0:
            raise LabError(f"setns {name}: {os.strerror(ctypes.get_errno())}")
        try:
            yield
        finally:
            if libc.setns(own, CLONE_NEWNET) != 0:  # pragma: no cover - would leave the thread lost
                raise LabError(f"setns back: {os.strerror(ctypes.get_errno())}")
    finally:
        os.close(target)
        os.close(own)


def listening_socket(namespace: str, address: str, port: int) -> socket.socket:
    """A TCP socket listening on ``address:port`` inside ``namespace``: a process of the host's
    namespace that is handed its descriptor serves the lab's address and nothing else."""
    with inside(namespace):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((address, port))
    sock.listen(1024)
    sock.set_inheritable(True)
    return sock


@dataclass
class Namespaces:
    """The lab's namespaces (``<prefix>-<role>``), made and removed together."""

    prefix: str
    made: list[str] = field(default_factory=list)

    def name(self, role: str) -> str:
        return f"{self.prefix}-{role}"

    def add(self, role: str) -> str:
        name = self.name(role)
        run(["ip", "netns", "add", name])
        self.made.append(name)
        self.ip(role, "link", "set", "lo", "up")
        self.sysctl(role, "net.ipv4.ip_forward", "1")
        self.sysctl(role, "net.ipv4.conf.all.rp_filter", "0")
        self.sysctl(role, "net.ipv4.conf.default.rp_filter", "0")
        return name

    def ip(self, role: str, *args: str, check: bool = True) -> str:
        return run(["ip", "-n", self.name(role), *args], check=check)

    def exec(self, role: str, *command: str, check: bool = True, timeout: float = 30) -> str:
        return run(["ip", "netns", "exec", self.name(role), *command], check=check, timeout=timeout)

    def popen(self, role: str, command: Sequence[str], **kwargs: object) -> subprocess.Popen:
        return subprocess.Popen(["ip", "netns", "exec", self.name(role), *command], **kwargs)  # type: ignore[call-overload]

    def sysctl(self, role: str, key: str, value: str) -> None:
        self.exec(role, "sysctl", "-q", "-w", f"{key}={value}")

    def nft(self, role: str, ruleset: str) -> None:
        run(["ip", "netns", "exec", self.name(role), "nft", "-f", "-"], input=ruleset)

    def link(self, a: str, a_if: str, a_addr: str, b: str, b_if: str, b_addr: str) -> None:
        """A veth pair between namespaces ``a`` and ``b`` with an address (CIDR) on each end."""
        run(
            ["ip", "link", "add", a_if, "netns", self.name(a), "type", "veth",
             "peer", "name", b_if, "netns", self.name(b)]
        )  # fmt: skip
        for role, ifname, address in ((a, a_if, a_addr), (b, b_if, b_addr)):
            self.ip(role, "addr", "add", address, "dev", ifname)
            self.ip(role, "link", "set", ifname, "up")

    def shape(self, role: str, ifname: str, mbps: float) -> None:
        """Egress of ``ifname`` limited to ``mbps`` with tbf (a queue, like a real access link)."""
        burst = max(4000, int(mbps * 1_000_000 / 8 / 250))  # ~4 ms of data at the rate
        self.exec(
            role, "tc", "qdisc", "replace", "dev", ifname, "root", "tbf",
            "rate", f"{mbps}mbit", "burst", str(burst), "latency", "50ms",
        )  # fmt: skip

    def cleanup(self) -> None:
        """Kill every process in a namespace of this prefix, then delete the namespaces."""
        names = sorted(set(self.made) | {n for n in netns_list() if n.startswith(f"{self.prefix}-")})
        for sig in (signal.SIGTERM, signal.SIGKILL):
            pids = [pid for name in names for pid in netns_pids(name)]
            for pid in pids:
                with suppress(ProcessLookupError):
                    os.kill(pid, sig)
            deadline = time.monotonic() + 5
            while pids and time.monotonic() < deadline:
                pids = [pid for pid in pids if _alive(pid)]
                time.sleep(0.1)
        for name in names:
            run(["ip", "netns", "delete", name], check=False)
        self.made.clear()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ", 1)[1][0] != "Z"
    except OSError:
        return False
