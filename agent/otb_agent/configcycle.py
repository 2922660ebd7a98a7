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
#: Seconds between attempts when the server could not be reached to fetch a wanted config or to
#: report an applied one (a WAN just came back and its routes are not there yet, the server restarts):
#: the cycle retries on its own instead of waiting for the next trigger, which may never come.
RETRY_DELAYS = (1.0, 2.0, 4.0, 8.0, 15.0, 30.0)

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
        self.desired_hash: Optional[str] = None
        self.retry_delays = RETRY_DELAYS
        self._running = False
        self._dirty = False
        # (hash, error) applied on the box but not yet acknowledged by the server
        self._unreported: Optional[tuple] = None

    def on_desired_hash(self, desired: Optional[str]) -> None:
        """The server wants ``desired`` applied: start a cycle unless it already is. Such a cycle
        retries until the server could be reached (see RETRY_DELAYS)."""
        if desired:
            self.desired_hash = desired
        if self.enabled and desired and desired != self.applied_hash:
            self.spawn(self.run(retry=True))

    async def run(self, retry: bool = False) -> Dict[str, Any]:
        """Fetch + apply + report; coalesces concurrent triggers into one more round. With ``retry``,
        a round that could not reach the server is tried again after a delay, for as long as the
        server wants a config the box has not applied (or an applied one is not reported)."""
        if self._running:
            self._dirty = True
            return {"queued": True}
        self._running = True
        result: Dict[str, Any] = {}
        attempt = 0
        try:
            while True:
                self._dirty = False
                if self.http_semaphore is not None:
                    async with self.http_semaphore:
                        result = await self._refresh()
                else:
                    result = await self._refresh()
                if retry and result.get("unreachable") and self._still_wanted():
                    delay = self.retry_delays[min(attempt, len(self.retry_delays) - 1)]
                    attempt += 1
                    self.reporter.log.info("config_retry", in_s=delay, attempt=attempt)
                    await asyncio.sleep(delay)
                    continue
                if not self._dirty:
                    break
        finally:
            self._running = False
        return result

    def _still_wanted(self) -> bool:
        return self._unreported is not None or (
            self.desired_hash is not None and self.desired_hash != self.applied_hash
        )

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
            return {"error": f"fetch failed: {e}", "unreachable": transient(e)}
        if status == 304:
            if h == self.applied_hash or saved is None:
                if h is not None and self._unreported is not None and self._unreported[0] == h:
                    return await self._report(h, self._unreported[1], changed=False)
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
        # reported first, then recorded: whoever sees the new applied hash knows the server was told
        # (or that the cycle will tell it: ``_unreported``)
        result = await self._report(h, error, changed=True)
        if error is None:
            self.applied_hash = h
            self.store.meta_set("applied_config_hash", h)
            self.reporter.log.info("config_applied", config_hash=h)
        else:
            self.reporter.error("config_apply_failed", error, config_hash=h)
        self.reporter.status_update(force=True, applied_config_hash=self.applied_hash)
        return result

    async def _report(self, h: str, error: Optional[str], *, changed: bool) -> Dict[str, Any]:
        """Tell the server what was applied; remembered for the next round when it cannot be told."""
        result: Dict[str, Any] = {"config_hash": h, "changed": changed, "error": error}
        try:
            await asyncio.to_thread(httpapi.post_applied, self.fleet.server, self.fleet.token, h, error)
        except Exception as e:
            self.reporter.error("config_report_failed", str(e))
            if transient(e):
                self._unreported = (h, error)
                result["unreachable"] = True
        else:
            self._unreported = None
        return result


def transient(error: Exception) -> bool:
    """Worth trying again: the server was not reached, was busy or failed (not a refusal)."""
    if isinstance(error, httpapi.HttpError):
        return error.status >= 500 or error.status in (408, 429)
    return True


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
