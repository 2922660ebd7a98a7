"""The config cycle: fetch the box's configuration, apply it, report the outcome to the server.

Triggered when the server's desired hash (``welcome``, ``config_changed``) differs from the one
applied, and by the ``refresh_config`` command. The config is fetched with ``If-None-Match``,
written to ``config.json`` (0600), handed to the collector (WANs to monitor, tunnel interface,
telemetry interval) and to the applier (``--apply linux``: :mod:`otb_agent.dataplane.linux`) or the
apply hook, then reported with ``POST /config/applied``.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
from typing import Any, Awaitable, Callable, Dict, Optional

from . import httpapi
from .collectors import Collector
from .reporting import Reporter
from .store import Store
from .system import FleetAccess, Spawn
from .telemetry import TelemetryPump
from .util import CONFIG_FILE, read_json, write_json

HOOK_TIMEOUT = 120.0

#: Applies a config in process: None when applied, else the error text reported to the server.
ConfigApplier = Callable[[Dict[str, Any]], Awaitable[Optional[str]]]


class ConfigCycle:
    """Keeps one box's applied configuration in step with the server's. Without a state dir
    (simulated boxes) nothing is written to disk. ``enabled=False`` never fetches on its own."""

    def __init__(
        self,
        *,
        fleet: FleetAccess,
        collector: Collector,
        store: Store,
        pump: TelemetryPump,
        reporter: Reporter,
        spawn: Spawn,
        apply_hook: Optional[str] = None,
        applier: Optional[ConfigApplier] = None,
        enabled: bool = True,
        http_semaphore: Optional[asyncio.Semaphore] = None,
    ) -> None:
        self.fleet = fleet
        self.collector = collector
        self.store = store
        self.pump = pump
        self.reporter = reporter
        self.spawn = spawn
        self.apply_hook = apply_hook
        self.applier = applier
        self.enabled = enabled
        self.http_semaphore = http_semaphore
        self.applied_hash: Optional[str] = store.meta_get("applied_config_hash")
        self._running = False
        self._dirty = False

    def on_desired_hash(self, desired: Optional[str]) -> None:
        """The server wants ``desired`` applied: start a cycle unless it already is."""
        if self.enabled and desired and desired != self.applied_hash:
            self.spawn(self.run())

    async def run(self) -> Dict[str, Any]:
        """Fetch + apply + report; coalesces concurrent triggers into one more round."""
        if self._running:
            self._dirty = True
            return {"queued": True}
        self._running = True
        result: Dict[str, Any] = {}
        try:
            while True:
                self._dirty = False
                if self.http_semaphore is not None:
                    async with self.http_semaphore:
                        result = await self._refresh()
                else:
                    result = await self._refresh()
                if not self._dirty:
                    break
        finally:
            self._running = False
        return result

    async def run_when_idle(self) -> Dict[str, Any]:
        """A cycle of its own, once the one in progress (if any) has finished."""
        while self._running:
            await asyncio.sleep(0.05)
        return await self.run()

    def _config_path(self) -> Optional[str]:
        state_dir = self.fleet.state_dir
        return os.path.join(state_dir, CONFIG_FILE) if state_dir else None

    async def _refresh(self) -> Dict[str, Any]:
        path = self._config_path()
        saved = read_json(path) if path else None
        have = saved.get("config_hash") if isinstance(saved, dict) else (None if path else self.applied_hash)
        try:
            status, body, h = await asyncio.to_thread(
                httpapi.fetch_config, self.fleet.server, self.fleet.token, have
            )
        except Exception as e:
            self.reporter.error("config_fetch_failed", str(e))
            return {"error": f"fetch failed: {e}"}
        if status == 304:
            if h == self.applied_hash or saved is None:
                return {"config_hash": h, "changed": False, "error": None}
            body = saved
        if not isinstance(body, dict) or not h:
            self.reporter.error("config_invalid", "config body is not an object or has no hash")
            return {"error": "invalid config"}
        error: Optional[str] = None
        if path:
            write_json(path, body, mode=0o600)
        try:
            self.collector.configure(body)
        except Exception as e:
            self.reporter.log.warning("collector_configure_failed", error=repr(e))
        interval = body.get("telemetry_interval_s")
        if isinstance(interval, (int, float)) and not isinstance(interval, bool) and interval >= 1:
            self.pump.use_server_interval(float(interval))
        if self.applier is not None:
            error = await self.applier(body)
        elif self.apply_hook and path:
            error = await asyncio.to_thread(run_apply_hook, self.apply_hook, path)
        try:
            await asyncio.to_thread(httpapi.post_applied, self.fleet.server, self.fleet.token, h, error)
        except Exception as e:
            self.reporter.error("config_report_failed", str(e))
        if error is None:
            self.applied_hash = h
            self.store.meta_set("applied_config_hash", h)
            self.reporter.log.info("config_applied", config_hash=h)
        else:
            self.reporter.error("config_apply_failed", error, config_hash=h)
        self.reporter.status_update(force=True, applied_config_hash=self.applied_hash)
        return {"config_hash": h, "changed": True, "error": error}


def run_apply_hook(hook: str, config_path: str, timeout: float = HOOK_TIMEOUT) -> Optional[str]:
    """Run the apply hook with the config path; None on success, else an error text."""
    try:
        p = subprocess.run([hook, config_path], capture_output=True, text=True, timeout=timeout, check=False)
    except FileNotFoundError:
        return f"apply hook not found: {hook}"
    except PermissionError:
        return f"apply hook not executable: {hook}"
    except subprocess.TimeoutExpired:
        return f"apply hook timed out after {timeout:g}s"
    if p.returncode != 0:
        tail = "\n".join((p.stderr or "").strip().splitlines()[-10:])
        return (
            f"apply hook exited with {p.returncode}: {tail}"[:4000]
            if tail
            else f"apply hook exited {p.returncode}"
        )
    return None
