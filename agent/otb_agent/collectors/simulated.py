"""Simulated box: 2-4 WANs of different kinds, random-walk latency/loss/throughput, obeying the WAN
policy it applied.

:class:`SimulatedCollector` makes its telemetry; :class:`SimulatedSystem` answers the agent's
commands for it (reboots, firmware upgrades, speed tests and diagnostics are simulated in process;
nothing looks at the host running the simulator). Seeded by serial (same serial -> same WAN set),
or given its WANs (``wans``, e.g. from the demo's ``var/demo-boxes.csv``). Uses a tiny splitmix64
PRNG instead of random.Random (which costs ~2.5 KiB of state per box) to keep 10,000 boxes cheap.

The traffic follows the policy (docs/agent-protocol.md, "The simulated box"): the links carrying
are the primaries that are up, or, while every primary is down, the backups that are up; disabled
links carry nothing and are not reported (not monitored, as on a real box); links the policy does
not name are primaries. ``aggregate`` and ``failover`` bond the carrying links (MPTCP subflows:
the traffic splits by capacity); ``load-balance`` pins each connection to one of them. The box's
own ``rx_bps``/``tx_bps`` is the tunnel's goodput: what the links carry less the tunnel's headers
and, when several links carry one bonded connection, the scheduler's losses.
"""

from __future__ import annotations

import time
import uuid
import zlib
from typing import Any, Dict, List, Optional, Sequence, Tuple

from otb_protocol import (
    WAN_MODE_AGGREGATE,
    WAN_MODES,
    WAN_ROLE_DISABLED,
    WAN_ROLE_PRIMARY,
    WAN_ROLES,
)

from ..httpapi import InterfaceError
from .base import Collector
from .simulated_links import (
    _BACKUP,
    _FIXED,
    _MOBILE,
    HEADER_EFFICIENCY,
    PROFILES,
    UPLOAD_SHARE,
    WAN_HOSTS,
    WAN_NETWORKS,
    _Wan,
    capped,
    carrying_links,
    split,
    tunnel_efficiency,
    wans_from_spec,
)

_MASK = (1 << 64) - 1


class _Rng:
    __slots__ = ("s",)

    def __init__(self, seed: int) -> None:
        self.s = seed & _MASK

    def random(self) -> float:
        self.s = (self.s + 0x9E3779B97F4A7C15) & _MASK
        z = self.s
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
        return ((z ^ (z >> 31)) >> 11) / 9007199254740992.0

    def randint(self, a: int, b: int) -> int:
        return a + int(self.random() * (b - a + 1))

    def choice(self, seq: Any) -> Any:
        return seq[int(self.random() * len(seq))]


class SimulatedCollector(Collector):
    name = "simulated"
    blocking = False
    tunnel_iface = "otb0"

    def __init__(
        self,
        serial: str,
        flaky: bool = False,
        clock: Any = time.time,
        wans: Optional[Sequence[Tuple[str, str]]] = None,
    ) -> None:
        self.serial = serial
        self.clock = clock
        self.rng = _Rng(zlib.crc32(serial.encode("utf-8")) * 2654435761)
        rng = self.rng
        if wans:
            links = list(wans)
        else:
            n = rng.randint(2, 4)
            kinds = [rng.choice(_FIXED)] + [rng.choice(_BACKUP) for _ in range(n - 1)]
            links = [("wan" if i == 0 else f"wan{i + 1}", kind) for i, kind in enumerate(kinds)]
        first_network = rng.randint(0, len(WAN_NETWORKS) - 1)
        self.wans: List[_Wan] = []
        for i, (iface, kind) in enumerate(links):
            network = WAN_NETWORKS[(first_network + i) % len(WAN_NETWORKS)]
            self.wans.append(_Wan(iface, kind, f"{network}.{rng.randint(*WAN_HOSTS)}"))
        self.flaky = flaky
        self.load = rng.random() * 0.3  # share of the primaries' capacity in use (random walk)
        self.mem = 30.0 + rng.random() * 20
        self.conntrack = rng.randint(50, 800)
        self._boot_at = clock() - rng.randint(600, 30 * 86400)
        self._boot_id = str(
            uuid.UUID(int=(rng.randint(0, 1 << 62) << 64) | rng.randint(0, 1 << 62), version=4)
        )
        self.model_name = rng.choice(("OTB-v2c", "OTB-v2b", "OTB-Plus"))
        # firmware (rollouts): the version runs until a simulated upgrade's reboot swaps it
        self.installed_version = "23.05.3-otb.1"
        self.pending_upgrade: Optional[Tuple[str, bool]] = None  # (version, comes back unhealthy)
        self.unhealthy = False
        # The applied configuration: the policy's mode, and what the diagnostics show.
        self.mode = WAN_MODE_AGGREGATE
        self.config: Dict[str, Any] = {}
        self.tunnel_rx_bytes = 0
        self.tunnel_tx_bytes = 0
        self._last_ts: Optional[float] = None

    # -- configuration
    def configure(self, config: Dict[str, Any]) -> None:
        """Apply the WAN policy: mode, each named link's role and its speeds (``down_kbps`` /
        ``up_kbps`` shape a link below its line rate). Links the policy names but the box does not
        have are ignored (the portal flags them); links it does not name are primaries."""
        policy = config.get("wan_policy")
        policy = policy if isinstance(policy, dict) else {}
        mode = policy.get("mode")
        self.mode = mode if mode in WAN_MODES else WAN_MODE_AGGREGATE
        named: Dict[str, Dict[str, Any]] = {}
        for item in policy.get("interfaces") or []:
            if isinstance(item, dict) and isinstance(item.get("name"), str):
                named[item["name"]] = item
        for w in self.wans:
            item = named.get(w.iface, {})
            role = item.get("role")
            w.role = role if role in WAN_ROLES else WAN_ROLE_PRIMARY
            w.down_mbps = capped(w.profile[3], item.get("down_kbps"))
            w.up_mbps = capped(w.profile[4], item.get("up_kbps"))
        # Only what the diagnostics show is kept (10,000 boxes in one process).
        self.config = {key: config[key] for key in ("server", "tunnel", "public_ipv4") if key in config}

    # -- box info
    def uptime_s(self) -> int:
        return max(0, int(self.clock() - self._boot_at))

    def boot_id(self) -> str:
        return self._boot_id

    def firmware_version(self) -> str:
        return self.installed_version

    def model(self) -> str:
        return self.model_name

    def schedule_upgrade(self, version: str, unhealthy: bool) -> None:
        """Run ``version`` after the next reboot (with every link down if ``unhealthy``)."""
        self.pending_upgrade = (version, unhealthy)

    def reboot(self) -> None:
        """Simulated reboot: uptime restarts at 0 with a new boot id."""
        self._boot_at = self.clock()
        self._boot_id = str(uuid.uuid4())
        self.conntrack = 20
        self.tunnel_rx_bytes = self.tunnel_tx_bytes = 0
        for w in self.wans:
            w.down_left = 0
        if self.pending_upgrade is not None:  # a simulated firmware upgrade takes effect now
            self.installed_version, self.unhealthy = self.pending_upgrade
            self.pending_upgrade = None

    # -- the state the commands look at
    def links_up(self) -> List[bool]:
        return [w.up and not self.unhealthy for w in self.wans]

    def carrying(self) -> List[_Wan]:
        """The links carrying traffic right now (see :func:`carrying_links`)."""
        return [w for w, carries in zip(self.wans, carrying_links(self.wans, self.links_up())) if carries]

    def tunnel_up(self) -> bool:
        return bool(self.carrying())

    def tunnel_efficiency(self, carrying: int) -> float:
        return tunnel_efficiency(self.mode, carrying, self.rng)

    # -- sampling
    def _walk(self, value: float, lo: float, hi: float, step: float) -> float:
        value += (self.rng.random() - 0.5) * 2 * step
        return lo if value < lo else hi if value > hi else value

    def collect(self) -> Dict[str, Any]:
        rng = self.rng
        fail_mult = 8.0 if self.flaky else 1.0
        self.load = self._walk(self.load, 0.01, 0.95, 0.08)
        self.mem = self._walk(self.mem, 15.0, 85.0, 1.5)
        self.conntrack = int(self._walk(self.conntrack, 10, 20000, 60))
        for w in self.wans:
            if w.down_left > 0:
                w.down_left -= 1
            elif rng.random() < w.profile[5] * fail_mult:
                w.down_left = rng.randint(2, 30)
        carrying = self.carrying()
        primaries = [w for w in self.wans if w.role == WAN_ROLE_PRIMARY] or [
            w for w in self.wans if w.role != WAN_ROLE_DISABLED
        ]
        demand_down = self.load * sum(w.down_mbps for w in primaries) * 1e6
        demand_up = self.load * UPLOAD_SHARE * sum(w.up_mbps for w in primaries) * 1e6
        rx = split(self.mode, carrying, demand_down, upload=False, load=self.load, rng=rng)
        tx = split(self.mode, carrying, demand_up, upload=True, load=self.load, rng=rng)
        wans = []
        for w, up in zip(self.wans, self.links_up()):
            if w.role == WAN_ROLE_DISABLED:
                continue  # not monitored, as on a real box
            base_rtt, jit, base_loss = w.profile[0], w.profile[1], w.profile[2]
            if up:
                w.lat = self._walk(w.lat, 0.8, 3.0, 0.05 + 0.1 * self.load)
                w.loss = self._walk(w.loss, 0.0, 5.0 * (1 + base_loss), 0.05 + base_loss * 0.2)
                rtt: Optional[float] = round(base_rtt * w.lat + rng.random() * jit, 2)
                jitter: Optional[float] = round(jit * (0.5 + rng.random()), 2)
                loss = round(w.loss, 2)
                subflows = 2 if w.kind in _MOBILE else 1
            else:
                rtt = jitter = None
                loss = 100.0
                subflows = 0
            w.rtt = rtt
            wans.append(
                {
                    "iface": w.iface,
                    "label": w.label,
                    "kind": w.kind,
                    "up": up,
                    "rtt_ms": rtt,
                    "jitter_ms": jitter,
                    "loss_pct": loss,
                    "rx_bps": rx.get(w.iface, 0),
                    "tx_bps": tx.get(w.iface, 0),
                    "public_ip": w.ip if up else None,
                    "subflows": subflows,
                }
            )
        efficiency = self.tunnel_efficiency(len(carrying))
        tunnel_rx = int(sum(rx.values()) * efficiency)
        tunnel_tx = int(sum(tx.values()) * efficiency)
        now = self.clock()
        if self._last_ts is not None and now > self._last_ts:
            self.tunnel_rx_bytes += int(tunnel_rx / 8 * (now - self._last_ts))
            self.tunnel_tx_bytes += int(tunnel_tx / 8 * (now - self._last_ts))
        self._last_ts = now
        cpu = min(100.0, 3.0 + self.load * 60 + rng.random() * 5)
        return {
            "ts": round(now, 3),
            "cpu_pct": round(cpu, 2),
            "mem_pct": round(self.mem, 2),
            "load1": round(cpu / 100 * 2 + rng.random() * 0.1, 2),
            "uptime_s": self.uptime_s(),
            "tunnel_up": bool(carrying),
            "conntrack": self.conntrack,
            "rx_bps": tunnel_rx,
            "tx_bps": tunnel_tx,
            "wans": wans,
        }

    def speed_test_mbps(self, *, upload: bool, iface: Optional[str]) -> float:
        """What a speed test can move right now, before its noise: through the tunnel (``iface``
        None) the carrying links' spare capacity less the tunnel's overhead, or one link's spare
        capacity. InterfaceError if the box has no such link, OSError if it is down or disabled."""
        if iface is None:
            links = self.carrying()
            if not links:
                raise OSError("network is unreachable: no WAN link is up")
            efficiency = self.tunnel_efficiency(len(links))
        else:
            links = [w for w in self.wans if w.iface == iface]
            if not links:
                raise InterfaceError(f"no network interface named {iface!r}")
            if links[0].role == WAN_ROLE_DISABLED:
                raise OSError(f"network is unreachable: {iface} is disabled by the WAN policy")
            if not links[0].up or self.unhealthy:
                raise OSError(f"network is unreachable: {iface} is down")
            efficiency = 1.0
        capacity = sum(w.up_mbps if upload else w.down_mbps for w in links)
        return capacity * efficiency * max(0.3, 1.0 - 0.6 * self.load)


# The system lives in a module of its own so that neither module is large to compile: `otb-agent run`
# imports this one, within its memory budget (bench/agent.py), also when no bytecode is cached.
from .simulated_system import SimulatedSystem  # noqa: E402

__all__ = [
    "HEADER_EFFICIENCY",
    "PROFILES",
    "SimulatedCollector",
    "SimulatedSystem",
    "carrying_links",
    "wans_from_spec",
]
