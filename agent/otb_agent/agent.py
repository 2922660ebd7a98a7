"""The agent of one box: its websocket session, and the parts that act on what the session carries.

:class:`Agent` connects (capped exponential backoff with jitter between attempts), says ``hello``,
and, once welcomed, dispatches the server's frames to its parts:

* :class:`~otb_agent.telemetry.TelemetryPump`: samples, the queue, ``ack``;
* :class:`~otb_agent.configcycle.ConfigCycle`: ``config_changed`` (and ``welcome``'s desired hash);
* :class:`~otb_agent.commands.CommandRunner`: ``command`` (and ``welcome``'s pending commands),
  done by the box's :class:`~otb_agent.system.BoxSystem`.

It sends heartbeats when idle, drops a connection that went silent, and stops for good when the
server rejects the token (4001). ``otb-agent run`` runs one; ``otb-agent simulate`` runs thousands
in one event loop, so per-instance state is kept small and there is a single task per box (plus
short-lived tasks for commands and config fetches).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from typing import Any, Coroutine, Dict, List, Optional, Set

import otb_protocol
from otb_protocol import ProtocolError, UnknownMessageType

from . import __version__, httpapi, wsconnect
from .backoff import Backoff
from .channel import Channel, close_quietly
from .collectors import Collector
from .commands import CommandRunner
from .configcycle import ConfigApplier, ConfigCycle
from .reporting import Reporter, Stats
from .store import Store
from .system import BoxSystem, FleetAccess
from .telemetry import TelemetryPump
from .util import Logger, Status

EXIT_OK = 0
EXIT_UNAUTHORIZED = 3

HELLO_TIMEOUT = 30.0
DEFAULT_HEARTBEAT_INTERVAL = 30.0
DEFAULT_RATE_LIMIT_RETRY = 30.0


class _Outcome:
    """How a session ended."""

    __slots__ = ("close_code", "rebooting", "retry_after", "unauthorized", "welcomed")

    def __init__(self) -> None:
        self.close_code: Optional[int] = None
        self.retry_after: Optional[float] = None
        self.unauthorized = False
        self.rebooting = False
        self.welcomed = False


class Agent:
    """One box's agent. ``system`` acts for the box (:class:`otb_agent.host.HostSystem` on a real
    one); the semaphores bound the handshakes and HTTP requests of many agents in one process;
    ``ws_url`` overrides the URL derived from ``server`` (as ``OTB_AGENT_WS_URL`` does)."""

    def __init__(
        self,
        *,
        server: str,
        token: str,
        serial: str,
        collector: Collector,
        store: Store,
        system: BoxSystem,
        log: Optional[Logger] = None,
        status: Optional[Status] = None,
        state_dir: Optional[str] = None,
        apply_hook: Optional[str] = None,
        config_applier: Optional[ConfigApplier] = None,
        stats: Optional[Stats] = None,
        backoff: Optional[Backoff] = None,
        telemetry_interval: Optional[float] = None,
        fetch_config: bool = True,
        connect_semaphore: Optional[asyncio.Semaphore] = None,
        http_semaphore: Optional[asyncio.Semaphore] = None,
        ping_interval: Optional[float] = 20.0,
        first_tick_delay: Optional[float] = None,
        ws_url: Optional[str] = None,
    ) -> None:
        self.fleet = FleetAccess(server.rstrip("/"), token, state_dir)
        self.ws_url = ws_url or os.environ.get("OTB_AGENT_WS_URL") or httpapi.ws_url(self.fleet.server)
        self.serial = serial
        self.collector = collector
        self.store = store
        self.system = system
        self.reporter = Reporter(log or Logger(level="warning"), status, stats or Stats())
        self.log = self.reporter.log
        self.stats = self.reporter.stats
        self.backoff = backoff or Backoff()
        self.heartbeat_interval = DEFAULT_HEARTBEAT_INTERVAL
        self.connect_semaphore = connect_semaphore
        self.ping_interval = ping_interval

        self.channel = Channel(self.reporter)
        self.telemetry = TelemetryPump(
            collector=collector,
            store=store,
            channel=self.channel,
            reporter=self.reporter,
            spawn=self._spawn,
            interval_override=telemetry_interval,
            first_tick_delay=first_tick_delay,
        )
        self.config = ConfigCycle(
            fleet=self.fleet,
            collector=collector,
            store=store,
            pump=self.telemetry,
            reporter=self.reporter,
            spawn=self._spawn,
            apply_hook=apply_hook,
            applier=config_applier,
            enabled=fetch_config,
            http_semaphore=http_semaphore,
        )
        self.commands = CommandRunner(
            system=system,
            fleet=self.fleet,
            channel=self.channel,
            store=store,
            collector=collector,
            config=self.config,
            reporter=self.reporter,
            spawn=self._spawn,
        )

        self.session_id: Optional[str] = None
        self.stopping = False
        self._last_recv = 0.0
        self._error_retry_after: Optional[float] = None
        self._tasks: Set[asyncio.Task[Any]] = set()
        self._stop_event: Optional[asyncio.Event] = None
        self._state = "starting"

    @property
    def welcomed(self) -> bool:
        """True while a session is up and the server has answered hello."""
        return self.channel.welcomed

    @property
    def applied_hash(self) -> Optional[str]:
        """The hash of the last configuration applied successfully."""
        return self.config.applied_hash

    # ------------------------------------------------------------------ helpers
    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _set_state(self, state: str, **fields: Any) -> None:
        if state != self._state:
            self._state = state
            self.log.debug("state", state=state, **fields)
        self.reporter.status_update(
            force=True,
            state=state,
            applied_config_hash=self.config.applied_hash,
            **self.telemetry.status_counts(),
            **fields,
        )

    def stop(self) -> None:
        """Request a clean shutdown (closes the current session)."""
        self.stopping = True
        if self._stop_event is not None:
            self._stop_event.set()
        ws = self.channel.ws
        if ws is not None:
            with contextlib.suppress(RuntimeError):
                self._spawn(ws.close(otb_protocol.CLOSE_GOING_AWAY, "agent stopping"))

    def hello(self) -> Dict[str, Any]:
        return {
            "type": "hello",
            "v": otb_protocol.PROTOCOL_VERSION,
            "agent_version": __version__,
            "firmware_version": self.collector.firmware_version()[:64],
            "model": self.collector.model()[:64],
            "applied_config_hash": self.config.applied_hash,
            "boot_id": self.collector.boot_id()[:64],
            "uptime_s": max(0, int(self.collector.uptime_s())),
            "dropped_samples": self.store.dropped_unreported(),
        }

    # ------------------------------------------------------------------ main loop
    async def run(self, stop_event: Optional[asyncio.Event] = None) -> int:
        """Hold the session until stopped (0) or the token is rejected (EXIT_UNAUTHORIZED)."""
        self._stop_event = stop_event or asyncio.Event()
        if self._stop_event.is_set():
            self.stopping = True
        try:
            while not self.stopping:
                self._set_state("connecting")
                retry_after: Optional[float] = None
                ws = None
                try:
                    if self.connect_semaphore is not None:
                        async with self.connect_semaphore:
                            if self.stopping:
                                break
                            ws = await self._connect()
                    else:
                        ws = await self._connect()
                except wsconnect.HandshakeRejected as e:
                    if e.status in (401, 403):
                        self._unauthorized(f"websocket handshake rejected with HTTP {e.status}")
                        return EXIT_UNAUTHORIZED
                    retry_after = e.retry_after
                    self.reporter.error("connect_failed", str(e), status=e.status)
                except asyncio.CancelledError:
                    raise
                except Exception as e:
                    self.reporter.error("connect_failed", f"{type(e).__name__}: {e}")
                if ws is not None:
                    outcome = await self._session(ws)
                    if outcome.unauthorized:
                        self._unauthorized(f"server closed the session with {outcome.close_code}")
                        return EXIT_UNAUTHORIZED
                    retry_after = outcome.retry_after
                    if outcome.rebooting and not self.stopping:
                        await self._reboot(self._stop_event)
                        continue
                if self.stopping:
                    break
                delay = self.backoff.next_delay(retry_after)
                self._set_state("backoff", session_id=None, retry_in_s=round(delay, 2))
                self.log.info("backoff", delay_s=round(delay, 2), attempt=self.backoff.attempt)
                await self._idle(delay, self._stop_event)
        finally:
            for t in list(self._tasks):
                if not t.done():
                    t.cancel()
            self._set_state("stopped", session_id=None)
            self.stats.stopped += 1
        return EXIT_OK

    async def _connect(self) -> Any:
        return await wsconnect.connect(self.ws_url, self.fleet.token, ping_interval=self.ping_interval)

    def _unauthorized(self, why: str) -> None:
        self.stats.unauthorized += 1
        self.reporter.error(
            "unauthorized",
            f"{why}: the agent token was revoked or is unknown; re-enroll the box (otb-agent enroll)",
            level="error",
        )

    async def _idle(self, delay: float, stop_event: asyncio.Event) -> None:
        """Sleep (backoff), still collecting telemetry into the buffer."""
        deadline = time.monotonic() + delay
        while not self.stopping:
            now = time.monotonic()
            if now >= deadline:
                return
            if now >= self.telemetry.next_collect:
                await self.telemetry.tick(now)
                continue
            try:
                await asyncio.wait_for(stop_event.wait(), min(deadline, self.telemetry.next_collect) - now)
                return
            except asyncio.TimeoutError:
                pass

    async def _reboot(self, stop_event: asyncio.Event) -> None:
        """The box reboots under a running agent (a simulated box): wait until it is back."""
        self._set_state("rebooting", session_id=None)
        self.log.info("rebooting")
        await self.system.complete_reboot(stop_event)
        self.telemetry.restart_clock()

    # ------------------------------------------------------------------ session
    async def _session(self, ws: Any) -> _Outcome:
        out = _Outcome()
        self.channel.ws = ws
        self.channel.welcomed = False
        self.telemetry.session_started()
        self._error_retry_after = None
        started = time.monotonic()
        try:
            await ws.send(otb_protocol.encode(self.hello()))
            self.channel.last_send = time.monotonic()
            first = await asyncio.wait_for(ws.recv(), HELLO_TIMEOUT)
            msg = otb_protocol.decode(first, ignore_unknown_fields=True)
            if msg["type"] == "error":
                self._on_error_frame(msg)
                # The server closes right after; wait for it to learn the close code.
                await asyncio.wait_for(ws.recv(), 10)
                raise ProtocolError("server answered hello with an error")
            if msg["type"] != "welcome":
                raise ProtocolError(f"expected welcome, got {msg['type']}")
            out.welcomed = True
            self.backoff.session_started(started)
            self.stats.connected += 1
            self.stats.sessions += 1
            await self._on_welcome(msg)
            await self._loop(ws)
        except wsconnect.ConnectionClosed as e:
            out.close_code = wsconnect.close_code(e)
        except asyncio.TimeoutError:
            self.reporter.error("session_timeout", "no frame from the server in time")
        except ProtocolError as e:
            self.reporter.error("protocol_error", str(e), field=e.field_path)
            await close_quietly(ws, 1002, "protocol error")
        except asyncio.CancelledError:
            await close_quietly(ws, otb_protocol.CLOSE_GOING_AWAY, "agent stopping")
            raise
        except OSError as e:
            self.reporter.error("session_io_error", f"{type(e).__name__}: {e}")
        finally:
            if out.welcomed:
                self.stats.connected -= 1
                self.backoff.session_ended(time.monotonic())
            self.channel.ws = None
            self.channel.welcomed = False
            self.session_id = None
        code = out.close_code
        out.rebooting = self.system.reboot_pending()
        if code is not None and not self.stopping:
            name = otb_protocol.CLOSE_CODE_NAMES.get(code, "unknown")
            level = (
                "info"
                if code in (otb_protocol.CLOSE_NORMAL, otb_protocol.CLOSE_SERVICE_RESTART)
                else "warning"
            )
            if code == otb_protocol.CLOSE_UNAUTHORIZED:
                out.unauthorized = True
            elif code == otb_protocol.CLOSE_RATE_LIMITED:
                out.retry_after = self._error_retry_after or DEFAULT_RATE_LIMIT_RETRY
            elif self._error_retry_after:
                out.retry_after = self._error_retry_after
            if not out.unauthorized and not out.rebooting:
                self.reporter.error(
                    "session_closed", f"closed by server: {code} {name}", level=level, code=code
                )
        return out

    async def _loop(self, ws: Any) -> None:
        recv_timeout = max(4 * self.heartbeat_interval, 120.0)
        self._last_recv = time.monotonic()
        while not self.stopping:
            now = time.monotonic()
            hb_due = self.channel.last_send + self.heartbeat_interval
            timeout = min(self.telemetry.next_collect, hb_due, self._last_recv + recv_timeout) - now
            raw = None
            if timeout > 0:
                try:
                    raw = await asyncio.wait_for(ws.recv(), timeout)
                except asyncio.TimeoutError:
                    raw = None
            now = time.monotonic()
            if raw is not None:
                self._last_recv = now
                await self._on_frame(raw)
                if self.system.reboot_pending():
                    await close_quietly(ws, otb_protocol.CLOSE_GOING_AWAY, "rebooting")
                    return
            if now >= self.telemetry.next_collect:
                await self.telemetry.tick(now)
                if self.system.link_dropped():
                    self.log.info("link_dropped")
                    wsconnect.abort(ws)
                    return
            if now - self._last_recv > recv_timeout:
                self.reporter.error("session_stale", f"nothing received for {recv_timeout:.0f}s")
                await close_quietly(ws, otb_protocol.CLOSE_GOING_AWAY, "stale")
                return
            if now - self.channel.last_send >= self.heartbeat_interval:
                await self.channel.send({"type": "heartbeat", "ts": round(time.time(), 3)})

    # ------------------------------------------------------------------ frames
    async def _on_welcome(self, msg: Dict[str, Any]) -> None:
        self.session_id = msg["session_id"]
        self.telemetry.use_server_interval(float(msg["telemetry_interval_s"]))
        self.heartbeat_interval = float(msg["heartbeat_interval_s"])
        last = msg["last_acked_seq"]
        removed = self.telemetry.welcomed(last)
        self.channel.welcomed = True
        self.log.info(
            "connected",
            session_id=self.session_id,
            last_acked_seq=last,
            removed=removed,
            depth=self.store.depth(),
        )
        self._set_state("connected", session_id=self.session_id, connected_since=time.time(), retry_in_s=None)
        await self.commands.resend_unsent()
        self.config.on_desired_hash(msg.get("desired_config_hash"))
        for cmd in msg.get("pending_commands") or []:
            await self.commands.on_command(cmd)
        await self.telemetry.pump()

    async def _on_frame(self, raw: Any) -> None:
        try:
            msg = otb_protocol.decode(raw, ignore_unknown_fields=True)
        except UnknownMessageType as e:
            self.log.info("unknown_message_type_ignored", message=e.message)
            return
        except ProtocolError as e:
            self.reporter.error("invalid_frame", str(e), field=e.field_path)
            return
        t = msg["type"]
        if t == "ack":
            await self.telemetry.on_ack(msg["seq"])
        elif t == "heartbeat":
            pass
        elif t == "config_changed":
            self.config.on_desired_hash(msg["desired_config_hash"])
        elif t == "command":
            await self.commands.on_command(msg)
        elif t == "error":
            self._on_error_frame(msg)
        else:
            self.log.info("unexpected_message_ignored", type=t)

    def _on_error_frame(self, msg: Dict[str, Any]) -> None:
        if msg.get("retry_after_s") is not None:
            self._error_retry_after = float(msg["retry_after_s"])
        self.reporter.error(
            "server_error", f"{msg['code']}: {msg['message']}", code=msg["code"], field=msg.get("field")
        )


__all__: List[str] = ["EXIT_OK", "EXIT_UNAUTHORIZED", "Agent", "Stats"]
