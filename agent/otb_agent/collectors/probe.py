"""Per-WAN latency/loss probe: runs ``ping`` bound to each interface and parses it."""

from __future__ import annotations

import re
import shlex
import subprocess
from typing import Dict, List, Optional, Sequence

DEFAULT_COMMAND = "ping -c {count} -W 1 -I {iface} {target}"

_TX_RX = re.compile(r"(\d+) packets transmitted, (\d+) (?:packets )?received")
_LOSS = re.compile(r"([\d.]+)% packet loss")
_RTT = re.compile(
    r"(?:rtt|round-trip) min/avg/max(?:/(?:mdev|stddev))? = ([\d.]+)/([\d.]+)/([\d.]+)(?:/([\d.]+))? ms"
)
_TIME = re.compile(r"time[=<]([\d.]+) ?ms")

Result = Dict[str, Optional[float]]
NULL_RESULT: Result = {"rtt_ms": None, "jitter_ms": None, "loss_pct": None}


def parse_ping(output: str) -> Result:
    """Parse iputils or busybox ping output into rtt/jitter/loss (None when unknown)."""
    loss: Optional[float] = None
    m = _TX_RX.search(output)
    if m:
        tx, rx = int(m.group(1)), int(m.group(2))
        loss = round(100.0 * (tx - rx) / tx, 2) if tx else None
    else:
        m2 = _LOSS.search(output)
        if m2:
            loss = float(m2.group(1))
    rtt: Optional[float] = None
    jitter: Optional[float] = None
    m = _RTT.search(output)
    times = [float(t) for t in _TIME.findall(output)]
    if m:
        rtt = float(m.group(2))
        if m.group(4) is not None:
            jitter = float(m.group(4))
    elif times:
        rtt = sum(times) / len(times)
    if jitter is None and len(times) >= 2:
        diffs = [abs(a - b) for a, b in zip(times, times[1:])]
        jitter = round(sum(diffs) / len(diffs), 3)
    if loss is not None:
        loss = min(100.0, max(0.0, loss))
    return {"rtt_ms": rtt, "jitter_ms": jitter, "loss_pct": loss}


class PingProbe:
    """Runs one ping per interface concurrently (Popen), waits for all."""

    def __init__(
        self, target: str, command: str = DEFAULT_COMMAND, count: int = 3, timeout: float = 8.0
    ) -> None:
        self.target = target
        self.command = command
        self.count = count
        self.timeout = timeout
        self.missing = False

    def argv(self, iface: str) -> List[str]:
        return [
            part.format(iface=iface, target=self.target, count=self.count)
            for part in shlex.split(self.command)
        ]

    def probe(self, ifaces: Sequence[str]) -> Dict[str, Result]:
        out: Dict[str, Result] = {}
        if self.missing or not ifaces:
            return {i: dict(NULL_RESULT) for i in ifaces}
        procs = {}
        for iface in ifaces:
            try:
                procs[iface] = subprocess.Popen(
                    self.argv(iface), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
                )
            except FileNotFoundError:
                self.missing = True
                out[iface] = dict(NULL_RESULT)
            except OSError:
                out[iface] = dict(NULL_RESULT)
        for iface, p in procs.items():
            try:
                stdout, _ = p.communicate(timeout=self.timeout)
                out[iface] = parse_ping(stdout or "")
            except subprocess.TimeoutExpired:
                p.kill()
                p.communicate()
                out[iface] = {"rtt_ms": None, "jitter_ms": None, "loss_pct": 100.0}
        return out
