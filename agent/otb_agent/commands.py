"""The agent's command handlers: run each ``command`` the server sends once, and answer it.

A command is remembered in the store (id, kind, boot id) before it runs and with its result after,
so a duplicate delivery (or a re-delivery in ``welcome.pending_commands`` after a restart) gets the
stored result again instead of running twice. Handlers check the params (``params.<name> ...``
errors), report progress and ask the :class:`~otb_agent.system.BoxSystem` to do the work.
Results that could not be sent (no session) are sent after the next ``welcome``.
"""

from __future__ import annotations

import asyncio
import http.client
import time
from typing import Any, Awaitable, Callable, Dict, Optional, Set

import otb_protocol
from otb_protocol import (
    DIAGNOSTIC_CHECKS,
    SPEED_TEST_DEFAULT_BYTES,
    SPEED_TEST_DIRECTIONS,
    SPEED_TEST_MAX_BYTES,
)

from . import backup, firmware, httpapi
from .channel import Channel
from .collectors import Collector
from .configcycle import ConfigCycle
from .reporting import Reporter
from .store import Store
from .system import BoxSystem, CommandOutcome, FleetAccess, Progress, Spawn

Handler = Callable[[Dict[str, Any], Progress], Awaitable[CommandOutcome]]


class CommandRunner:
    """Runs one box's commands (see the module docstring) on its ``system``; ``fleet`` is what the
    system needs to reach the fleet server and keep its files."""

    def __init__(
        self,
        *,
        system: BoxSystem,
        fleet: FleetAccess,
        channel: Channel,
        store: Store,
        collector: Collector,
        config: ConfigCycle,
        reporter: Reporter,
        spawn: Spawn,
    ) -> None:
        self.system = system
        self.fleet = fleet
        self.channel = channel
        self.store = store
        self.collector = collector
        self.config = config
        self.reporter = reporter
        self.spawn = spawn
        self._running: Set[str] = set()
        self._unsent: Dict[str, Dict[str, Any]] = {}
        self._speed_test_lock: Optional[asyncio.Lock] = None  # made in the loop (Python 3.9)
        self._handlers: Dict[str, Handler] = {
            "reboot": self._reboot,
            "restart_services": self._restart_services,
            "diagnostics": self._diagnostics,
            "speed_test": self._speed_test,
            "refresh_config": self._refresh_config,
            "firmware_upgrade": self._firmware_upgrade,
        }
        # Handlers that also need the command's id (the server files the backup under it).
        self._handlers_with_id: Dict[
            str, Callable[[str, Dict[str, Any], Progress], Awaitable[CommandOutcome]]
        ] = {
            "backup": self._backup,
            "restore": self._restore,
        }

    # -- delivery
    async def on_command(self, cmd: Dict[str, Any]) -> None:
        """A command frame (or an entry of ``welcome.pending_commands``)."""
        cid = cmd["id"]
        kind = cmd["kind"]
        if cid in self._running:
            await self.channel.send(
                {"type": "command_progress", "id": cid, "progress": 0, "message": "already running"}
            )
            return
        rec = self.store.command_get(cid)
        if rec is not None:
            result = rec.get("result")
            if rec["state"] != "done" or result is None:
                # Started in an earlier agent process that did not finish it.
                if rec.get("kind") == "reboot" and rec.get("boot_id") != self.collector.boot_id():
                    result = _result(cid, True, {"rebooted": True, "previous_boot_id": rec.get("boot_id")})
                else:
                    result = _result(cid, False, {}, "interrupted: the agent restarted while running it")
                self.store.command_finish(cid, result)
            self.reporter.log.info("command_duplicate", id=cid, kind=kind)
            await self._send_result(result)
            return
        if cmd["expires_at"] < time.time():
            result = _result(cid, False, {}, "expired")
            self.store.command_finish(cid, result)
            await self._send_result(result)
            return
        self.store.command_start(cid, kind, self.collector.boot_id())
        self._running.add(cid)
        self.reporter.stats.commands += 1
        self.reporter.log.info("command_start", id=cid, kind=kind)
        self.spawn(self._run(cmd))

    async def resend_unsent(self) -> None:
        """Send the results that found no session when they were ready (after a welcome)."""
        for result in list(self._unsent.values()):
            if await self.channel.send(result):
                self._unsent.pop(result["id"], None)

    async def _run(self, cmd: Dict[str, Any]) -> None:
        cid = cmd["id"]
        kind = cmd["kind"]
        try:
            handler = self._handlers.get(kind)
            with_id = self._handlers_with_id.get(kind)
            if with_id is not None:
                ok, output, error = await with_id(cid, cmd.get("params") or {}, self._progress(cid))
                result = _result(cid, ok, output, error)
            elif handler is None:
                result = _result(cid, False, {}, "unsupported")
            else:
                ok, output, error = await handler(cmd.get("params") or {}, self._progress(cid))
                result = _result(cid, ok, output, error)
        except asyncio.CancelledError:
            self._running.discard(cid)
            raise
        except Exception as e:
            result = _result(cid, False, {}, f"{type(e).__name__}: {e}"[:4000])
        result = _fit_result(result)
        self.store.command_finish(cid, result)
        self._running.discard(cid)
        self.reporter.log.info("command_done", id=cid, kind=kind, ok=result["ok"], error=result["error"])
        await self._send_result(result)
        if self.system.reboot_pending():
            await self.channel.close(otb_protocol.CLOSE_GOING_AWAY, "rebooting")

    async def _send_result(self, result: Dict[str, Any]) -> None:
        if self.channel.welcomed and await self.channel.send(result):
            self._unsent.pop(result["id"], None)
        else:
            self._unsent[result["id"]] = result

    def _progress(self, cid: str) -> Progress:
        async def send(percent: int, message: str) -> None:
            if self.channel.welcomed:
                await self.channel.send(
                    {"type": "command_progress", "id": cid, "progress": percent, "message": message[:512]}
                )

        return Progress(send, self.spawn)

    # -- handlers: (ok, output, error)
    async def _reboot(self, params: Dict[str, Any], progress: Progress) -> CommandOutcome:
        delay = params.get("delay_s", 0)
        if type(delay) is not int or not 0 <= delay <= 3600:
            return False, {}, "params.delay_s must be an integer 0..3600"
        if delay:
            await progress.report(5, f"rebooting in {delay}s")
            await asyncio.sleep(delay)
        await progress.report(10, "rebooting")
        return await self.system.reboot()

    async def _restart_services(self, params: Dict[str, Any], progress: Progress) -> CommandOutcome:
        return await self.system.restart_services()

    async def _diagnostics(self, params: Dict[str, Any], progress: Progress) -> CommandOutcome:
        checks = params.get("checks")
        if checks is not None and (
            not isinstance(checks, list) or not checks or any(c not in DIAGNOSTIC_CHECKS for c in checks)
        ):
            return False, {}, "params.checks must be a non-empty subset of " + ", ".join(DIAGNOSTIC_CHECKS)
        out = await self.system.diagnostics(
            self.fleet, checks=checks, tunnel_iface=self.collector.tunnel_iface, progress=progress
        )
        ok = all(c["ok"] for c in out["checks"].values())
        failed = [k for k, c in out["checks"].items() if not c["ok"]]
        return ok, out, None if ok else "failed checks: " + ", ".join(failed)

    async def _speed_test(self, params: Dict[str, Any], progress: Progress) -> CommandOutcome:
        """Download and/or upload ``bytes`` through the speedtest endpoint, optionally through one
        interface (one WAN). Output: the download's ``bytes``/``duration_s``/``mbps`` at the top level
        (as before upload existed), the upload's under ``upload``; see docs/agent-protocol.md."""
        nbytes = params.get("bytes", SPEED_TEST_DEFAULT_BYTES)
        if type(nbytes) is not int or nbytes <= 0:
            return False, {}, "params.bytes must be a positive integer"
        nbytes = min(nbytes, SPEED_TEST_MAX_BYTES)
        direction = params.get("direction", "download")
        if direction not in SPEED_TEST_DIRECTIONS:
            return False, {}, "params.direction must be download, upload or both"
        iface = params.get("iface")
        if iface is not None:
            problem = otb_protocol.interface_name_problem(iface)
            if problem:
                return False, {}, f"params.iface {problem}"
        output: Dict[str, Any] = {"direction": direction}
        if iface is not None:
            output["iface"] = iface
        output.update(self.system.speed_test_output())
        via = f" via {iface}" if iface is not None else ""
        if self._speed_test_lock is None:
            self._speed_test_lock = asyncio.Lock()
        if self._speed_test_lock.locked():
            await progress.report(1, "waiting for another speed test to finish")
        async with self._speed_test_lock:  # one at a time: concurrent tests would share the link
            phases = [d for d in ("download", "upload") if direction in (d, "both")]
            for index, phase in enumerate(phases):
                verb = "downloading" if phase == "download" else "uploading"
                await progress.report(5 + 50 * index, f"{verb} {nbytes} bytes{via}")
                try:
                    moved, duration = await self.system.speed_test(
                        self.fleet, direction=phase, nbytes=nbytes, iface=iface
                    )
                except httpapi.InterfaceError as e:
                    return False, output, f"params.iface: {e}"
                except (httpapi.HttpError, OSError, http.client.HTTPException, ValueError) as e:
                    return False, output, f"{phase} failed: {e}"[:4000]
                figures = _speed_figures(moved, duration)
                if phase == "download":
                    output.update(figures)
                else:
                    output["upload"] = figures
                if moved != nbytes:
                    what = "received" if phase == "download" else "the server received"
                    return False, output, f"{phase}: {what} {moved} of {nbytes} bytes"
        return True, output, None

    async def _refresh_config(self, params: Dict[str, Any], progress: Progress) -> CommandOutcome:
        res = await self.config.run_when_idle()
        err = res.get("error")
        return err is None, {k: v for k, v in res.items() if k != "error"}, err

    async def _firmware_upgrade(self, params: Dict[str, Any], progress: Progress) -> CommandOutcome:
        """Download (resumable), verify sha256 + ed25519, apply: see :mod:`otb_agent.firmware`."""
        try:
            upgrade = firmware.UpgradeParams(params)
        except firmware.FirmwareError as exc:
            return False, {"code": exc.code}, str(exc)
        return await self.system.firmware_upgrade(
            self.fleet, upgrade, current_version=self.collector.firmware_version(), progress=progress
        )

    async def _backup(self, cid: str, params: Dict[str, Any], progress: Progress) -> CommandOutcome:
        """Collect the configuration files (:mod:`otb_agent.backup`) and upload them as one backup."""
        files, skipped = await asyncio.to_thread(backup.collect, self.fleet.state_dir, backup.backup_paths())
        await progress.report(50, f"uploading {len(files)} files")
        try:
            answer = await asyncio.to_thread(
                httpapi.backup_upload, self.fleet.server, self.fleet.token, cid, files
            )
        except (httpapi.HttpError, OSError, ValueError) as e:
            return False, {"files": len(files), "skipped": skipped}, f"upload failed: {e}"[:4000]
        return True, {"backup_id": answer.get("id"), "files": len(files), "skipped": skipped}, None

    async def _restore(self, cid: str, params: Dict[str, Any], progress: Progress) -> CommandOutcome:
        """Fetch the backup ``params.backup_id`` and write back the files this box backs up."""
        backup_id = params.get("backup_id")
        if not isinstance(backup_id, str) or not backup_id:
            return False, {}, "params.backup_id is required"
        try:
            found = await asyncio.to_thread(
                httpapi.backup_fetch, self.fleet.server, self.fleet.token, backup_id
            )
        except (httpapi.HttpError, OSError, ValueError) as e:
            return (
                False,
                {"backup_id": backup_id},
                f"params.backup_id: fetching the backup failed: {e}"[:4000],
            )
        await progress.report(50, "writing files")
        outcome = await asyncio.to_thread(backup.restore, found.get("files") or [], backup.backup_paths())
        output = {"backup_id": backup_id, **outcome}
        if outcome["failed"]:
            return False, output, "could not write: " + ", ".join(f["filename"] for f in outcome["failed"])
        return True, output, None


def _result(cid: str, ok: bool, output: Dict[str, Any], error: Optional[str] = None) -> Dict[str, Any]:
    return {"type": "command_result", "id": cid, "ok": ok, "output": output, "error": error}


def _speed_figures(nbytes: int, duration: float) -> Dict[str, Any]:
    mbps = nbytes * 8 / duration / 1e6 if duration > 0 else 0.0
    return {"bytes": nbytes, "duration_s": round(duration, 3), "mbps": round(mbps, 2)}


def _fit_result(result: Dict[str, Any]) -> Dict[str, Any]:
    """Make sure a command_result frame validates and fits in one frame."""
    try:
        otb_protocol.encode(result)
        return result
    except otb_protocol.ProtocolError as e:
        text = repr(result.get("output"))
        return {
            "type": "command_result",
            "id": result["id"],
            "ok": bool(result["ok"]),
            "output": {"truncated": True, "excerpt": text[:8000]},
            "error": (result.get("error") or f"result did not fit: {e}")[:4000],
        }
