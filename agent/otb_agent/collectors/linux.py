"""Linux collector: /proc and /sys counters (``root`` lets tests point at a fake tree), MPTCP
subflows per WAN from ``ss``, and, when the agent runs the box's data plane (``--apply linux``),
the tunnel's own throughput and state.

External commands go through a *runner* (``argv -> (returncode, stdout)``, raising
FileNotFoundError when the tool is missing) so tests replay recorded outputs.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from .base import Collector, wans_from_config
from .probe import NULL_RESULT, PingProbe


def _read(path: str) -> Optional[str]:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return None


def parse_net_dev(text: str) -> Dict[str, Tuple[int, int]]:
    """/proc/net/dev -> {iface: (rx_bytes, tx_bytes)}"""
    out: Dict[str, Tuple[int, int]] = {}
    for line in text.splitlines()[2:]:
        if ":" not in line:
            continue
        name, rest = line.split(":", 1)
        fields = rest.split()
        if len(fields) >= 9:
            try:
                out[name.strip()] = (int(fields[0]), int(fields[8]))
            except ValueError:
                continue
    return out


Runner = Callable[[Sequence[str]], Tuple[int, str]]

# WireGuard re-keys a live session every 2 minutes: an older handshake means no session.
HANDSHAKE_STALE_S = 180.0
NFT_COUNTERS = ("nft", "-j", "list", "counters", "table", "inet", "otb_box")


def command_runner(argv: Sequence[str], timeout: float = 10.0) -> Tuple[int, str]:
    p = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, check=False)
    return p.returncode, p.stdout


def parse_ss_subflows(text: str) -> Dict[str, int]:
    """``ss -tniH`` -> {local IPv4 address: number of MPTCP subflows (TCP sockets with the mptcp
    ULP) from it}. A socket's line is followed by its indented info line."""
    out: Dict[str, int] = {}
    local: Optional[str] = None
    for line in text.splitlines():
        if not line.strip():
            continue
        if not line[0].isspace():
            fields = line.split()
            local = None
            if len(fields) >= 5:
                addr = fields[3].rsplit(":", 1)[0].split("%", 1)[0]
                local = addr if "." in addr and not addr.startswith("[") else None
            continue
        if local and "tcp-ulp-mptcp" in line:
            out[local] = out.get(local, 0) + 1
            local = None
    return out


def parse_addresses(text: str) -> Dict[str, str]:
    """``ip -4 -j addr show`` -> {device: its first global IPv4 address}."""
    out: Dict[str, str] = {}
    try:
        data = json.loads(text)
    except ValueError:
        return out
    for itf in data if isinstance(data, list) else []:
        for a in itf.get("addr_info") or [] if isinstance(itf, dict) else []:
            if a.get("family") == "inet" and a.get("scope") == "global" and a.get("local"):
                out.setdefault(str(itf.get("ifname")), str(a["local"]))
    return out


def parse_nft_counters(text: str) -> Dict[str, int]:
    """``nft -j list counters`` -> {counter name: bytes}."""
    out: Dict[str, int] = {}
    try:
        data = json.loads(text)
    except ValueError:
        return out
    for item in data.get("nftables") or [] if isinstance(data, dict) else []:
        counter = item.get("counter") if isinstance(item, dict) else None
        if isinstance(counter, dict) and counter.get("name"):
            out[str(counter["name"])] = int(counter.get("bytes") or 0)
    return out


def parse_latest_handshakes(text: str) -> Optional[int]:
    """``wg show IF latest-handshakes`` -> the newest handshake (epoch seconds; 0: never)."""
    newest: Optional[int] = None
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit():
            newest = max(newest or 0, int(parts[1]))
    return newest


def parse_meminfo(text: str) -> Dict[str, int]:
    out = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0].endswith(":"):
            with contextlib.suppress(ValueError):
                out[parts[0][:-1]] = int(parts[1])
    return out


def parse_cpu(text: str) -> Optional[Tuple[int, int]]:
    """/proc/stat first line -> (busy, total) jiffies."""
    for line in text.splitlines():
        if line.startswith("cpu "):
            vals = [int(x) for x in line.split()[1:]]
            idle = vals[3] + (vals[4] if len(vals) > 4 else 0)  # idle + iowait
            total = sum(vals[:8])  # guest time is already counted in user
            return total - idle, total
    return None


class LinuxCollector(Collector):
    name = "linux"
    blocking = True

    def __init__(
        self,
        root: str = "/",
        wans: Optional[List[Dict[str, Any]]] = None,
        probe: Optional[PingProbe] = None,
        tunnel_iface: Optional[str] = None,
        clock: Any = time.time,
        runner: Optional[Runner] = None,
        proxy_alive: Optional[Callable[[], bool]] = None,
    ) -> None:
        """``proxy_alive`` is given when the agent runs the data plane (``--apply linux``): the
        box's aggregate is then the tunnel's (``tunnel_iface`` plus the bytes through ss-redir,
        counted by nftables) and the tunnel is up while ss-redir runs and WireGuard has a fresh
        handshake. ``runner`` runs ``ss``, ``ip``, ``nft`` and ``wg`` (default: real commands on the
        real root, none on a fake one)."""
        self.root = root
        self.runner: Optional[Runner] = runner or (command_runner if root == "/" else None)
        self.proxy_alive = proxy_alive
        self.public_ipv4: Optional[str] = None
        self._subflows: Dict[str, int] = {}
        self._addresses: Dict[str, str] = {}
        self._prev_tunnel: Optional[Tuple[int, int]] = None
        self.static_wans = list(wans or [])
        self.config_wans: List[Dict[str, Any]] = []
        self.probe = probe
        self.tunnel_iface = tunnel_iface
        self.clock = clock
        self._prev_cpu: Optional[Tuple[int, int]] = None
        self._prev_dev: Dict[str, Tuple[int, int]] = {}
        self._prev_ts: Optional[float] = None
        self._public_ips: Dict[str, str] = {}

    # -- paths
    def p(self, *parts: str) -> str:
        return os.path.join(self.root, *parts)

    def configure(self, config: Dict[str, Any]) -> None:
        self.config_wans = wans_from_config(config)
        tunnel = config.get("tunnel") if isinstance(config, dict) else None
        if isinstance(tunnel, dict) and isinstance(tunnel.get("interface"), str) and not self.tunnel_iface:
            self.tunnel_iface = tunnel["interface"]
        public = config.get("public_ipv4") if isinstance(config, dict) else None
        self.public_ipv4 = public if isinstance(public, str) and public else None

    def _command(self, *argv: str) -> Optional[str]:
        """The output of a command, None when it fails or its tool is missing."""
        if self.runner is None:
            return None
        try:
            rc, out = self.runner(argv)
        except (OSError, subprocess.SubprocessError):
            return None
        return out if rc == 0 else None

    def wans(self) -> List[Dict[str, Any]]:
        return self.static_wans or self.config_wans

    # -- box info
    def uptime_s(self) -> int:
        text = _read(self.p("proc", "uptime"))
        try:
            return int(float(text.split()[0])) if text else 0
        except (ValueError, IndexError):
            return 0

    def boot_id(self) -> str:
        text = _read(self.p("proc", "sys", "kernel", "random", "boot_id"))
        return text.strip() if text else "unknown"

    def firmware_version(self) -> str:
        text = _read(self.p("etc", "openwrt_release")) or ""
        for line in text.splitlines():
            if line.startswith("DISTRIB_RELEASE="):
                return line.split("=", 1)[1].strip().strip("'\"")[:64]
        text = _read(self.p("etc", "os-release")) or ""
        for line in text.splitlines():
            if line.startswith("VERSION_ID="):
                return line.split("=", 1)[1].strip().strip("'\"")[:64]
        return "unknown"

    def model(self) -> str:
        for path in (
            self.p("tmp", "sysinfo", "model"),
            self.p("sys", "devices", "virtual", "dmi", "id", "product_name"),
        ):
            text = _read(path)
            if text and text.strip():
                return text.strip()[:64]
        return "unknown"

    # -- interface state
    def link_up(self, dev: str) -> bool:
        oper = (_read(self.p("sys", "class", "net", dev, "operstate")) or "").strip()
        carrier = (_read(self.p("sys", "class", "net", dev, "carrier")) or "").strip()
        if oper == "up":
            return carrier != "0"
        if oper == "unknown":  # ppp, tun, wwan devices often report "unknown"
            return carrier == "1"
        return False

    def wan_device(self, wan: Dict[str, Any]) -> str:
        return wan["name"]

    def wan_extra(self, wan: Dict[str, Any], dev: str) -> Dict[str, Any]:
        """Overrides for up/public_ip/subflows: the MPTCP subflows leaving from the WAN's address,
        and the box's dedicated public address (what the internet sees through any link)."""
        address = self._addresses.get(dev)
        return {
            "subflows": self._subflows.get(address, 0) if address else 0,
            "public_ip": self.public_ipv4 if self.link_up(dev) else None,
        }

    def refresh(self) -> None:
        """External state, once per collect(): WAN addresses and MPTCP subflows."""
        text = self._command("ip", "-4", "-j", "addr", "show")
        self._addresses = parse_addresses(text) if text else {}
        text = self._command("ss", "-tniH")
        self._subflows = parse_ss_subflows(text) if text else {}

    def tunnel_sample(self, dev_counters: Dict[str, Tuple[int, int]], dt: float) -> Tuple[bool, int, int]:
        """(up, rx_bps, tx_bps) of the data plane's tunnel: WireGuard's interface counters plus the
        bytes of the connections redirected to ss-redir (nft counters ``redirect_down``/``_up``)."""
        wg = dev_counters.get(self.tunnel_iface or "", (0, 0))
        text = self._command(*NFT_COUNTERS)
        redirected = parse_nft_counters(text) if text else {}
        total = (wg[0] + redirected.get("redirect_down", 0), wg[1] + redirected.get("redirect_up", 0))
        rx = tx = 0
        prev = self._prev_tunnel
        if prev is not None and dt > 0 and total[0] >= prev[0] and total[1] >= prev[1]:
            rx, tx = int((total[0] - prev[0]) * 8 / dt), int((total[1] - prev[1]) * 8 / dt)
        self._prev_tunnel = total
        text = self._command("wg", "show", self.tunnel_iface or "", "latest-handshakes")
        handshake = parse_latest_handshakes(text) if text else None
        fresh = bool(handshake) and self.clock() - (handshake or 0) < HANDSHAKE_STALE_S
        alive = self.proxy_alive() if self.proxy_alive is not None else False
        return fresh and alive, rx, tx

    def collect(self) -> Dict[str, Any]:
        ts = self.clock()
        self.refresh()
        cpu_pct = 0.0
        cpu = parse_cpu(_read(self.p("proc", "stat")) or "")
        if cpu is not None:
            if self._prev_cpu is not None:
                busy = cpu[0] - self._prev_cpu[0]
                total = cpu[1] - self._prev_cpu[1]
                if total > 0:
                    cpu_pct = round(min(100.0, max(0.0, 100.0 * busy / total)), 2)
            self._prev_cpu = cpu
        mem = parse_meminfo(_read(self.p("proc", "meminfo")) or "")
        mem_pct = 0.0
        if mem.get("MemTotal"):
            avail = mem.get("MemAvailable")
            if avail is None:
                avail = mem.get("MemFree", 0) + mem.get("Buffers", 0) + mem.get("Cached", 0)
            mem_pct = round(min(100.0, max(0.0, 100.0 * (1 - avail / mem["MemTotal"]))), 2)
        load1 = 0.0
        text = _read(self.p("proc", "loadavg"))
        if text:
            with contextlib.suppress(ValueError, IndexError):
                load1 = float(text.split()[0])
        conntrack = 0
        text = _read(self.p("proc", "sys", "net", "netfilter", "nf_conntrack_count"))
        if text:
            with contextlib.suppress(ValueError):
                conntrack = int(text.strip())

        dev_counters = parse_net_dev(_read(self.p("proc", "net", "dev")) or "")
        dt = (ts - self._prev_ts) if self._prev_ts is not None else 0.0

        def rate(dev: str) -> Tuple[int, int]:
            cur = dev_counters.get(dev)
            prev = self._prev_dev.get(dev)
            if cur is None or prev is None or dt <= 0:
                return 0, 0
            drx, dtx = cur[0] - prev[0], cur[1] - prev[1]
            if drx < 0 or dtx < 0:  # counter reset
                return 0, 0
            return int(drx * 8 / dt), int(dtx * 8 / dt)

        wans = self.wans()
        devs = [self.wan_device(w) for w in wans]
        probe_results = {}
        if self.probe is not None:
            live = [d for d in devs if d in dev_counters]
            probe_results = self.probe.probe(live)
        wan_samples = []
        any_up = False
        tot_rx = tot_tx = 0
        for wan, dev in zip(wans, devs):
            rx, tx = rate(dev)
            up = dev in dev_counters and self.link_up(dev)
            pr = probe_results.get(dev, NULL_RESULT)
            sample = {
                "iface": wan["name"],
                "label": wan.get("label") or wan["name"],
                "kind": wan.get("kind") or "other",
                "up": up,
                "rtt_ms": pr["rtt_ms"],
                "jitter_ms": pr["jitter_ms"],
                "loss_pct": pr["loss_pct"],
                "rx_bps": rx,
                "tx_bps": tx,
                "public_ip": None,
                "subflows": 0,
            }
            sample.update(self.wan_extra(wan, dev))
            if not sample["up"]:
                sample["rtt_ms"] = sample["jitter_ms"] = None
            any_up = any_up or sample["up"]
            tot_rx += rx
            tot_tx += tx
            wan_samples.append(sample)

        tunnel_up = any_up
        if self.proxy_alive is not None:
            tunnel_up, tot_rx, tot_tx = self.tunnel_sample(dev_counters, dt)
        elif self.tunnel_iface and self.tunnel_iface in dev_counters:
            tunnel_up = self.link_up(self.tunnel_iface)
            tot_rx, tot_tx = rate(self.tunnel_iface)
        self._prev_dev = dev_counters
        self._prev_ts = ts
        return {
            "ts": round(ts, 3),
            "cpu_pct": cpu_pct,
            "mem_pct": mem_pct,
            "load1": max(0.0, load1),
            "uptime_s": self.uptime_s(),
            "tunnel_up": bool(tunnel_up),
            "conntrack": max(0, conntrack),
            "rx_bps": tot_rx,
            "tx_bps": tot_tx,
            "wans": wan_samples,
        }
