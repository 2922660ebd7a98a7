"""The real box: :class:`HostSystem` acts on the host the agent runs on.

The blocking work (programs, downloads, speed-test transfers) runs in a worker thread.
"""

from __future__ import annotations

import asyncio
import functools
import os
from typing import Any, Dict, Optional, Tuple

from . import firmware, httpapi
from .diagnostics import run_command, split_command
from .system import BoxSystem, CommandOutcome, FleetAccess, Progress


class HostSystem(BoxSystem):
    """The box the agent runs on. ``reboot_command`` and ``restart_command`` are shell-like
    command lines; ``firmware_apply_command`` installs a verified image (``{image}`` is its path)."""

    def __init__(
        self,
        *,
        reboot_command: str = "reboot",
        restart_command: str = "/etc/init.d/network restart",
        firmware_apply_command: Optional[str] = None,
    ) -> None:
        self.reboot_command = reboot_command
        self.restart_command = restart_command
        self.firmware_apply_command = (
            firmware_apply_command
            or os.environ.get("OTB_FIRMWARE_APPLY_COMMAND")
            or firmware.DEFAULT_APPLY_COMMAND
        )

    async def reboot(self) -> CommandOutcome:
        res = await asyncio.to_thread(run_command, split_command(self.reboot_command), 60.0)
        if res["ok"]:
            return True, {"rebooting": True, "output": res["output"]}, None
        return False, {"output": res["output"]}, res["error"]

    async def restart_services(self) -> CommandOutcome:
        res = await asyncio.to_thread(run_command, split_command(self.restart_command), 120.0)
        return res["ok"], {"output": res["output"], "duration_s": res["duration_s"]}, res["error"]

    def speed_test_output(self) -> Dict[str, Any]:
        return {}

    async def speed_test(
        self, fleet: FleetAccess, *, direction: str, nbytes: int, iface: Optional[str]
    ) -> Tuple[int, float]:
        transfer = httpapi.speedtest if direction == "download" else httpapi.speedtest_upload
        return await asyncio.to_thread(
            transfer, fleet.server, fleet.token, nbytes, httpapi.SPEEDTEST_TIMEOUT, iface
        )

    async def firmware_upgrade(
        self, fleet: FleetAccess, upgrade: firmware.UpgradeParams, *, current_version: str, progress: Progress
    ) -> CommandOutcome:
        job = functools.partial(
            firmware.run_upgrade,
            upgrade,
            state_dir=fleet.state_dir or os.path.join(os.path.expanduser("~"), ".otb-agent"),
            server=fleet.server,
            token=fleet.token,
            public_key=firmware.signing_key_from_config(fleet.state_dir),
            current_version=current_version,
            apply_command=self.firmware_apply_command,
            progress=progress.report_from_thread,
        )
        try:
            output = await asyncio.to_thread(job)
        except firmware.FirmwareError as exc:
            return False, {"code": exc.code}, str(exc)
        return True, output, None

    def reboot_pending(self) -> bool:
        return False  # the reboot command stops the agent's process with the rest of the box

    async def complete_reboot(self, stopping: asyncio.Event) -> None:
        return None

    def link_dropped(self) -> bool:
        return False
