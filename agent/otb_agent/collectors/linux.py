"""Linux collector: /proc and /sys counters (``root`` lets tests point at a fake tree)."""

from __future__ import annotations

import contextlib
import os
import time
from typing import Any, Dict, List, Optional, Tuple

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
    ) -> None:
        self.root = root
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
        """Hook for subclasses: overrides for up/public_ip/subflows."""
        return {}

    def refresh(self) -> None:
        """Hook for subclasses: refresh external state once per collect()."""

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
        if self.tunnel_iface and self.tunnel_iface in dev_counters:
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
