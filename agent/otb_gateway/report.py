"""The gateway's report (POST /api/v1/servers/self/report, every 10 s by default): its own health and,
per box, the tunnel as the gateway sees it.

Per box, from the gateway's side: ``rx_bytes`` is what it received from the box (TCP to the box's
ss-server plus what the box forwarded through the WireGuard tunnel), ``tx_bytes`` what it sent to the
box; both cumulative (nftables named counters: they restart from 0 when the box's pieces are made
again, and the backend treats a smaller value as a restart). ``connections`` counts the established
connections on the box's port (MPTCP, or plain TCP from a client that fell back), ``handshake_age_s``
the seconds since the last WireGuard handshake (null: never).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple

from otb_agent.httpapi import api_url, request

from . import __version__
from .plan import NFT_FAMILY, NFT_TABLE, WG_IFACE, Plan, counter_names
from .runner import Runner

REPORT_PATH = "/api/v1/servers/self/report"
MAX_ERROR_LENGTH = 500


@dataclass
class CpuSample:
    busy: int
    total: int


def _cpu_sample(text: Optional[str]) -> Optional[CpuSample]:
    for line in (text or "").splitlines():
        if line.startswith("cpu "):
            values = [int(v) for v in line.split()[1:]]
            idle = values[3] + (values[4] if len(values) > 4 else 0)
            return CpuSample(busy=sum(values) - idle, total=sum(values))
    return None


def _meminfo_pct(text: Optional[str]) -> Optional[float]:
    values: Dict[str, int] = {}
    for line in (text or "").splitlines():
        name, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            values[name] = int(parts[0])
    total, available = values.get("MemTotal"), values.get("MemAvailable")
    if not total or available is None:
        return None
    return round(100.0 * (total - available) / total, 1)


def _local_port(line: str) -> Optional[int]:
    # Netid/State columns are left out when one socket kind and state is asked for:
    # "Recv-Q Send-Q Local:Port Peer:Port"; the first address:port column is the local one.
    local = next((part for part in line.split() if ":" in part), None)
    port = local.rpartition(":")[2] if local else ""
    return int(port) if port.isdigit() else None


def port_counts(text: str) -> Dict[int, int]:
    """Established sockets per local port, from ``ss -HnM state established`` (MPTCP sockets)."""
    counts: Dict[int, int] = {}
    for line in text.splitlines():
        port = _local_port(line)
        if port is not None:
            counts[port] = counts.get(port, 0) + 1
    return counts


def plain_tcp_port_counts(text: str) -> Dict[int, int]:
    """Established plain TCP connections per local port, from ``ss -Hnti state established``: each
    socket line is followed by an indented details line, which says ``tcp-ulp-mptcp`` for a subflow
    of an MPTCP connection (counted once, as an MPTCP socket, by ``port_counts``). A client that
    does not speak MPTCP gets a plain TCP connection from ss-server, shown only here."""
    counts: Dict[int, int] = {}
    port: Optional[int] = None
    subflow = False

    def flush() -> None:
        if port is not None and not subflow:
            counts[port] = counts.get(port, 0) + 1

    for line in text.splitlines():
        if line[:1].isspace():
            subflow = subflow or "tcp-ulp-mptcp" in line
            continue
        flush()
        port, subflow = _local_port(line), False
    flush()
    return counts


class Reporter:
    """Builds the report from the host and sends it."""

    def __init__(
        self,
        runner: Runner,
        *,
        upstream: Optional[str],
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.runner = runner
        self.upstream = upstream
        self.clock = clock
        self.wall = wall
        self.started = clock()
        self._cpu: Optional[CpuSample] = _cpu_sample(runner.read_file("/proc/stat"))

    # -- host -----------------------------------------------------------------------------------

    def _cpu_pct(self) -> Optional[float]:
        sample = _cpu_sample(self.runner.read_file("/proc/stat"))
        previous, self._cpu = self._cpu, sample
        if sample is None or previous is None or sample.total <= previous.total:
            return None
        return round(100.0 * (sample.busy - previous.busy) / (sample.total - previous.total), 1)

    def _load1(self) -> Optional[float]:
        text = self.runner.read_file("/proc/loadavg") or ""
        try:
            return float(text.split()[0])
        except (IndexError, ValueError):
            return None

    def _upstream(self) -> Optional[Dict[str, Any]]:
        if not self.upstream:
            return None
        base = f"/sys/class/net/{self.upstream}/statistics"
        try:
            rx = int((self.runner.read_file(os.path.join(base, "rx_bytes")) or "").strip())
            tx = int((self.runner.read_file(os.path.join(base, "tx_bytes")) or "").strip())
        except ValueError:
            return None
        return {"name": self.upstream, "rx_bytes": rx, "tx_bytes": tx}

    # -- boxes ----------------------------------------------------------------------------------

    def _counters(self) -> Dict[str, int]:
        done = self.runner.run(
            ["nft", "-j", "list", "counters", "table", NFT_FAMILY, NFT_TABLE], mutates=False, check=False
        )
        counters: Dict[str, int] = {}
        if done.returncode != 0 or not done.stdout.strip():
            return counters
        for item in json.loads(done.stdout).get("nftables", []):
            counter = item.get("counter") if isinstance(item, dict) else None
            if isinstance(counter, dict):
                counters[str(counter.get("name"))] = int(counter.get("bytes", 0))
        return counters

    def _handshakes(self) -> Dict[str, int]:
        done = self.runner.run(["wg", "show", WG_IFACE, "latest-handshakes"], mutates=False, check=False)
        found: Dict[str, int] = {}
        for line in done.stdout.splitlines() if done.returncode == 0 else []:
            parts = line.split()
            if len(parts) == 2 and parts[1].isdigit():
                found[parts[0]] = int(parts[1])
        return found

    def _connections(self) -> Dict[int, int]:
        """Connections per local port: MPTCP connections plus plain TCP ones (clients that fell back)."""
        mptcp = self.runner.run(["ss", "-HnM", "state", "established"], mutates=False, check=False)
        tcp = self.runner.run(["ss", "-Hnti", "state", "established"], mutates=False, check=False)
        counts = port_counts(mptcp.stdout) if mptcp.returncode == 0 else {}
        for port, count in (plain_tcp_port_counts(tcp.stdout) if tcp.returncode == 0 else {}).items():
            counts[port] = counts.get(port, 0) + count
        return counts

    def boxes(self, plan: Optional[Plan]) -> List[Dict[str, Any]]:
        if plan is None or not plan.boxes:
            return []
        counters = self._counters()
        handshakes = self._handshakes()
        connections = self._connections()
        now = int(self.wall())
        rows = []
        for box in plan.boxes.values():
            names = counter_names(box.box_id)
            handshake = handshakes.get(box.wg_peer.public_key, 0) if box.wg_peer else 0
            rows.append(
                {
                    "box_id": box.box_id,
                    "rx_bytes": counters.get(names["tcp_rx"], 0) + counters.get(names["fwd_rx"], 0),
                    "tx_bytes": counters.get(names["tcp_tx"], 0) + counters.get(names["fwd_tx"], 0),
                    "connections": connections.get(box.port, 0) if box.ss_config is not None else 0,
                    "handshake_age_s": max(0, now - handshake) if handshake else None,
                }
            )
        return rows

    # -- the report -----------------------------------------------------------------------------

    def build(self, *, plan: Optional[Plan], wg_public_key: str, errors: List[str]) -> Dict[str, Any]:
        """The report. Without a plan (no peers document yet) it leaves ``boxes`` out: the backend
        then keeps the boxes' tunnel rows as they are instead of taking the silence for an empty list."""
        report = {
            "gateway_version": __version__,
            "uptime_s": int(self.clock() - self.started),
            "load1": self._load1(),
            "cpu_pct": self._cpu_pct(),
            "mem_pct": _meminfo_pct(self.runner.read_file("/proc/meminfo")),
            "wg_public_key": wg_public_key,
            "peers": len(plan.boxes) if plan is not None else 0,
            "converge_errors": len(errors),
            "last_error": errors[-1][:MAX_ERROR_LENGTH] if errors else "",
            "upstream": self._upstream(),
        }
        if plan is not None:
            report["boxes"] = self.boxes(plan)
        return report


def send_report(server: str, token: str, report: Dict[str, Any], timeout: float = 10.0) -> Tuple[int, Any]:
    """POST the report; returns (status, parsed answer). Raises HttpError / ConnectionError."""
    status, _, raw = request(
        "POST",
        api_url(server, REPORT_PATH),
        body=report,
        token=token,
        headers={"User-Agent": f"otb-gateway/{__version__}"},
        timeout=timeout,
    )
    try:
        return status, json.loads(raw.decode("utf-8")) if raw else None
    except (UnicodeDecodeError, ValueError):
        return status, None
