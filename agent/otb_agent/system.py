"""What the agent asks of the box it runs on: the :class:`BoxSystem` interface.

The agent's command handlers (:mod:`otb_agent.commands`) check a command's params and report its
progress; a BoxSystem does the work. Two implementations:

* :class:`otb_agent.host.HostSystem`: the real box (runs ``reboot``, the network restart, the
  firmware apply command; moves speed-test bytes through the fleet server);
* :class:`otb_agent.collectors.simulated.SimulatedSystem`: a simulated box (``otb-agent simulate``,
  ``otb-agent run --collector simulated``): it fakes reboots, upgrades and speed tests in process.
"""

from __future__ import annotations

import abc
import asyncio
from typing import Any, Callable, Coroutine, Dict, NamedTuple, Optional, Sequence, Tuple

from . import diagnostics
from .firmware import UpgradeParams

#: (ok, output, error): what a command handler answers; see ``command_result`` in the protocol.
CommandOutcome = Tuple[bool, Dict[str, Any], Optional[str]]

#: Starts a coroutine as a task of the agent (cancelled when the agent stops).
Spawn = Callable[[Coroutine[Any, Any, Any]], "asyncio.Task[Any]"]


class FleetAccess(NamedTuple):
    """How the box reaches its fleet server (base URL, agent token), and where the agent keeps its
    files (None for a simulated box kept in memory)."""

    server: str
    token: str
    state_dir: Optional[str]


class Progress:
    """Reports the progress of one running command: ``await report(...)`` on the event loop, or
    ``report_from_thread(...)`` from blocking work running in a worker thread."""

    def __init__(self, send: Callable[[int, str], Coroutine[Any, Any, None]], spawn: Spawn) -> None:
        self._send = send
        self._spawn = spawn
        self._loop = asyncio.get_running_loop()

    async def report(self, percent: int, message: str) -> None:
        await self._send(percent, message)

    def report_from_thread(self, percent: int, message: str) -> None:
        self._loop.call_soon_threadsafe(lambda: self._spawn(self._send(percent, message)))


class BoxSystem(abc.ABC):
    """The box's operating system, as the agent's commands and session need it."""

    @abc.abstractmethod
    async def reboot(self) -> CommandOutcome:
        """Reboot the box now (the command's delay has passed)."""

    @abc.abstractmethod
    async def restart_services(self) -> CommandOutcome:
        """Restart the box's network services."""

    async def diagnostics(
        self,
        fleet: FleetAccess,
        *,
        checks: Optional[Sequence[str]],
        tunnel_iface: Optional[str],
        progress: Progress,
    ) -> Dict[str, Any]:
        """Run the diagnostics ``checks`` (None: all): ``{"checks": {name: {"ok", ...}}, "server": ...}``.

        The checks look at the host the agent runs on (:mod:`otb_agent.diagnostics`), which is the
        box itself for a real one; a simulated box has no network of its own to look at."""
        return await asyncio.to_thread(
            diagnostics.run_checks, fleet.server, progress.report_from_thread, checks, tunnel_iface
        )

    @abc.abstractmethod
    def speed_test_output(self) -> Dict[str, Any]:
        """The fields a speed test's output starts with on this box (a simulated one says so)."""

    @abc.abstractmethod
    async def speed_test(
        self, fleet: FleetAccess, *, direction: str, nbytes: int, iface: Optional[str]
    ) -> Tuple[int, float]:
        """Move ``nbytes`` one way (``direction`` is ``download`` or ``upload``) through the server's
        speedtest endpoint, through the interface ``iface`` if given: (bytes moved, seconds).

        Raises :class:`otb_agent.httpapi.InterfaceError` when the interface cannot be used, and
        ``HttpError``, ``OSError``, ``http.client.HTTPException`` or ``ValueError`` when the
        transfer fails."""

    @abc.abstractmethod
    async def firmware_upgrade(
        self, fleet: FleetAccess, upgrade: UpgradeParams, *, current_version: str, progress: Progress
    ) -> CommandOutcome:
        """Download, verify and apply the firmware image; success means "applied, rebooting"."""

    @abc.abstractmethod
    def reboot_pending(self) -> bool:
        """True when the box is to reboot under the agent's feet: the agent then ends its session
        and calls :meth:`complete_reboot` (a real reboot just stops the agent's process)."""

    @abc.abstractmethod
    async def complete_reboot(self, stopping: asyncio.Event) -> None:
        """Go through the pending reboot (returns early once ``stopping`` is set)."""

    @abc.abstractmethod
    def link_dropped(self) -> bool:
        """Asked after each telemetry sample: True to cut the connection without a close frame
        (a simulated flaky uplink; a real box's network faults need no help)."""
