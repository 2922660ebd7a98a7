"""Simulated box: 2-4 WANs of different kinds, random-walk latency/loss/throughput.

:class:`SimulatedCollector` makes its telemetry; :class:`SimulatedSystem` answers the agent's
commands for it (reboots, firmware upgrades and speed tests are faked in process). Seeded by serial
(same serial -> same WAN set). Uses a tiny splitmix64 PRNG instead of random.Random (which costs
~2.5 KiB of state per box) to keep 10,000 boxes cheap.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
import zlib
from typing import Any, Dict, List, Optional, Tuple

from ..firmware import UpgradeParams
from ..httpapi import InterfaceError
from ..system import BoxSystem, CommandOutcome, FleetAccess, Progress
from .base import Collector

_MASK = (1 << 64) - 1

# kind: (base rtt ms, jitter ms, base loss %, down Mbit/s, up Mbit/s, P(link failure) per sample)
PROFILES: Dict[str, tuple] = {
    "fiber": (5.0, 0.5, 0.0, 900.0, 300.0, 0.001),
    "cable": (12.0, 2.0, 0.05, 300.0, 30.0, 0.002),
    "vdsl": (15.0, 1.5, 0.1, 60.0, 12.0, 0.002),
    "adsl": (35.0, 3.0, 0.3, 12.0, 1.0, 0.003),
    "sdsl": (12.0, 1.0, 0.05, 20.0, 20.0, 0.002),
    "lte": (40.0, 12.0, 0.8, 80.0, 25.0, 0.006),
    "5g": (22.0, 6.0, 0.4, 400.0, 60.0, 0.005),
    "satellite": (600.0, 40.0, 1.0, 100.0, 10.0, 0.004),
}
_FIXED = ("fiber", "vdsl", "adsl", "cable", "sdsl")
_BACKUP = ("lte", "lte", "5g", "vdsl", "adsl", "satellite")
_LABELS = {
    "fiber": "Fibre",
    "cable": "Cable",
    "vdsl": "VDSL",
    "adsl": "ADSL",
    "sdsl": "SDSL",
    "lte": "4G",
    "5g": "5G",
    "satellite": "Satellite",
}


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


class _Wan:
    __slots__ = ("down_left", "iface", "ip", "kind", "label", "lat", "loss", "profile")

    def __init__(self, iface: str, kind: str, ip: str) -> None:
        self.iface = iface
        self.kind = kind
        self.label = _LABELS.get(kind, kind)
        self.profile = PROFILES[kind]
        self.lat = 1.0  # multiplicative random walk around the base rtt
        self.loss = self.profile[2]
        self.down_left = 0  # samples left before the link comes back
        self.ip = ip


class SimulatedCollector(Collector):
    name = "simulated"
    blocking = False

    def __init__(self, serial: str, flaky: bool = False, clock: Any = time.time) -> None:
        self.serial = serial
        self.clock = clock
        self.rng = _Rng(zlib.crc32(serial.encode("utf-8")) * 2654435761)
        rng = self.rng
        n = rng.randint(2, 4)
        kinds = [rng.choice(_FIXED)] + [rng.choice(_BACKUP) for _ in range(n - 1)]
        self.wans: List[_Wan] = []
        for i, kind in enumerate(kinds):
            ip = (
                f"{rng.choice((198, 203))}.{51 if i % 2 else 0}.{113 if i % 2 else 100}.{rng.randint(1, 254)}"
            )
            self.wans.append(_Wan("wan" if i == 0 else f"wan{i + 1}", kind, ip))
        self.flaky = flaky
        self.load = rng.random() * 0.3  # fraction of total capacity in use (random walk)
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
        for w in self.wans:
            w.down_left = 0
        if self.pending_upgrade is not None:  # a simulated firmware upgrade takes effect now
            self.installed_version, self.unhealthy = self.pending_upgrade
            self.pending_upgrade = None

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
        ups = []
        for w in self.wans:
            if w.down_left > 0:
                w.down_left -= 1
            elif rng.random() < w.profile[5] * fail_mult:
                w.down_left = rng.randint(2, 30)
            ups.append(w.down_left == 0 and not self.unhealthy)
        # Failover: the traffic is spread over the links that are up, by capacity.
        cap_down = sum(w.profile[3] for w, up in zip(self.wans, ups) if up)
        cap_up = sum(w.profile[4] for w, up in zip(self.wans, ups) if up)
        total_cap = sum(w.profile[3] for w in self.wans) or 1.0
        demand_down = self.load * total_cap * 1e6
        demand_up = demand_down * 0.2
        wans = []
        tot_rx = tot_tx = 0
        for w, up in zip(self.wans, ups):
            base_rtt, jit, base_loss = w.profile[0], w.profile[1], w.profile[2]
            if up:
                share_d = w.profile[3] / cap_down if cap_down else 0.0
                share_u = w.profile[4] / cap_up if cap_up else 0.0
                rx = int(min(w.profile[3] * 1e6, demand_down * share_d) * (0.9 + rng.random() * 0.2))
                tx = int(min(w.profile[4] * 1e6, demand_up * share_u) * (0.9 + rng.random() * 0.2))
                w.lat = self._walk(w.lat, 0.8, 3.0, 0.05 + 0.1 * self.load)
                w.loss = self._walk(w.loss, 0.0, 5.0 * (1 + base_loss), 0.05 + base_loss * 0.2)
                rtt = round(base_rtt * w.lat + rng.random() * jit, 2)
                jitter = round(jit * (0.5 + rng.random()), 2)
                loss = round(w.loss, 2)
                subflows = 2 if w.kind in ("lte", "5g", "satellite") else 1
            else:
                rx = tx = subflows = 0
                rtt = jitter = None
                loss = 100.0
            tot_rx += rx
            tot_tx += tx
            wans.append(
                {
                    "iface": w.iface,
                    "label": w.label,
                    "kind": w.kind,
                    "up": up,
                    "rtt_ms": rtt,
                    "jitter_ms": jitter,
                    "loss_pct": loss,
                    "rx_bps": rx,
                    "tx_bps": tx,
                    "public_ip": w.ip if up else None,
                    "subflows": subflows,
                }
            )
        cpu = min(100.0, 3.0 + self.load * 60 + rng.random() * 5)
        return {
            "ts": round(self.clock(), 3),
            "cpu_pct": round(cpu, 2),
            "mem_pct": round(self.mem, 2),
            "load1": round(cpu / 100 * 2 + rng.random() * 0.1, 2),
            "uptime_s": self.uptime_s(),
            "tunnel_up": any(ups),
            "conntrack": self.conntrack,
            "rx_bps": tot_rx,
            "tx_bps": tot_tx,
            "wans": wans,
        }

    def capacity_mbps(self, upload: bool = False, iface: Optional[str] = None) -> Optional[float]:
        """Download (or upload) capacity of the WANs that are up, or of the WAN ``iface`` only;
        None if there is no such WAN."""
        wans = [w for w in self.wans if iface is None or w.iface == iface]
        if iface is not None and not wans:
            return None
        return sum(w.profile[4 if upload else 3] for w in wans if w.down_left == 0)


class SimulatedSystem(BoxSystem):
    """The system of a simulated box (:class:`SimulatedCollector`).

    A reboot, or a successful firmware upgrade, takes the box down for ``reboot_delay`` seconds
    (the agent ends its session and reconnects afterwards, with a new boot id); an upgrade goes
    through its stages (``upgrade_stage_delay`` seconds each), fails if ``upgrade_fails``, and brings
    the box back with every link down if ``upgrade_unhealthy``. Speed
    tests are figures drawn from the WANs' capacity. ``flaky`` boxes drop their connection at random.
    Diagnostics are :class:`BoxSystem`'s: the real checks, run on the host.
    """

    RESTART_DELAY_S = 1.0
    LINK_DROP_PROBABILITY = 0.02  # per telemetry sample, for a flaky box

    def __init__(
        self,
        collector: SimulatedCollector,
        *,
        flaky: bool = False,
        reboot_delay: float = 3.0,
        upgrade_fails: bool = False,
        upgrade_unhealthy: bool = False,
        upgrade_stage_delay: float = 0.2,
    ) -> None:
        self.collector = collector
        self.flaky = flaky
        self.reboot_delay = reboot_delay
        self.upgrade_fails = upgrade_fails
        self.upgrade_unhealthy = upgrade_unhealthy
        self.upgrade_stage_delay = upgrade_stage_delay
        self._reboot_pending = False

    async def reboot(self) -> CommandOutcome:
        self._reboot_pending = True
        return True, {"rebooting": True, "simulated": True}, None

    async def restart_services(self) -> CommandOutcome:
        await asyncio.sleep(self.RESTART_DELAY_S)
        return True, {"restarted": True, "simulated": True}, None

    def speed_test_output(self) -> Dict[str, Any]:
        return {"simulated": True}

    async def speed_test(
        self, fleet: FleetAccess, *, direction: str, nbytes: int, iface: Optional[str]
    ) -> Tuple[int, float]:
        capacity = self.collector.capacity_mbps(upload=direction == "upload", iface=iface)
        if capacity is None:
            raise InterfaceError(f"no network interface named {iface!r}")
        mbps = capacity * (0.6 + self.collector.rng.random() * 0.3)
        duration = nbytes * 8 / (mbps * 1e6) if mbps > 0 else 0.0
        await asyncio.sleep(min(duration, 2.0))
        return nbytes, duration

    async def firmware_upgrade(
        self, fleet: FleetAccess, upgrade: UpgradeParams, *, current_version: str, progress: Progress
    ) -> CommandOutcome:
        for percent, stage in ((20, "downloading"), (82, "verifying"), (90, "installing")):
            await progress.report(percent, f"{stage}: {upgrade.version} (simulated)")
            await asyncio.sleep(self.upgrade_stage_delay)
        if self.upgrade_fails:
            return (
                False,
                {"code": "apply_failed", "simulated": True},
                "apply_failed: simulated install failure",
            )
        self.collector.schedule_upgrade(upgrade.version, self.upgrade_unhealthy)
        await progress.report(99, f"rebooting: into {upgrade.version} (simulated)")
        self._reboot_pending = True
        return True, {"stage": "rebooting", "version": upgrade.version, "simulated": True}, None

    def reboot_pending(self) -> bool:
        return self._reboot_pending

    async def complete_reboot(self, stopping: asyncio.Event) -> None:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stopping.wait(), self.reboot_delay)
        self.collector.reboot()
        self._reboot_pending = False

    def link_dropped(self) -> bool:
        return self.flaky and self.collector.rng.random() < self.LINK_DROP_PROBABILITY
