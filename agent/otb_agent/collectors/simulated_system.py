"""The system of a simulated box (:class:`SimulatedSystem`): what the agent's commands do on it."""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Any, Dict, Optional, Sequence, Tuple

from ..firmware import UpgradeParams
from ..system import BoxSystem, CommandOutcome, FleetAccess, Progress

if TYPE_CHECKING:
    from .simulated import SimulatedCollector


class SimulatedSystem(BoxSystem):
    """The system of a simulated box (:class:`SimulatedCollector`).

    A reboot, or a successful firmware upgrade, takes the box down for ``reboot_delay`` seconds
    (the agent ends its session and reconnects afterwards, with a new boot id); an upgrade goes
    through its stages (``upgrade_stage_delay`` seconds each), fails if ``upgrade_fails``, and brings
    the box back with every link down if ``upgrade_unhealthy``. Speed tests are figures drawn from
    the links the policy uses. Diagnostics describe the simulated box (its links, routes, MPTCP
    endpoints and tunnel, as the real tools print them: :mod:`.simulated_tools`), never the host
    running the simulator. ``flaky`` boxes drop their connection at random.
    """

    RESTART_DELAY_S = 1.0
    LINK_DROP_PROBABILITY = 0.02  # per telemetry sample, for a flaky box
    CHECK_DELAY_S = 0.05  # per diagnostics check, so that progress is seen moving

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

    async def diagnostics(
        self,
        fleet: FleetAccess,
        *,
        checks: Optional[Sequence[str]],
        tunnel_iface: Optional[str],
        progress: Progress,
    ) -> Dict[str, Any]:
        """The checks of :func:`otb_agent.diagnostics.run_checks`, answered for the simulated box."""
        # Loaded when first asked: `otb-agent run` imports this module, within its memory budget.
        from . import simulated_tools

        network = simulated_tools.SimulatedNetwork(self.collector, fleet.server)
        results: Dict[str, Any] = {}
        wanted = network.wanted(checks)
        for index, name in enumerate(wanted):
            await asyncio.sleep(self.CHECK_DELAY_S)
            results[name] = await network.check(name)
            await progress.report(int((index + 1) * 100 / len(wanted)), f"{name} done")
        return {"checks": results, "server": network.server(), "simulated": True}

    def speed_test_output(self) -> Dict[str, Any]:
        return {"simulated": True}

    async def speed_test(
        self, fleet: FleetAccess, *, direction: str, nbytes: int, iface: Optional[str]
    ) -> Tuple[int, float]:
        capacity = self.collector.speed_test_mbps(upload=direction == "upload", iface=iface)
        mbps = capacity * (0.9 + self.collector.rng.random() * 0.1)
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
