"""The agent session: hello/welcome, telemetry with acks, heartbeats, config, commands.

One :class:`Agent` drives one box. ``otb-agent run`` runs one; ``otb-agent simulate`` runs
thousands in one event loop, so per-instance state is kept small and there is a single
task per box (plus short-lived tasks for commands and config fetches).
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import os
import time
import uuid
from typing import Any, Callable, Dict, List, Optional, Set

from . import __version__, commands, httpapi, protocol, wsconnect
from .backoff import Backoff
from .protocol import ProtocolError, UnknownMessageType
from .util import CONFIG_FILE, Logger, Status, read_json, write_json

EXIT_OK = 0
EXIT_UNAUTHORIZED = 3

WINDOW = 32  # max unacked telemetry frames in flight
HELLO_TIMEOUT = 30.0
DEFAULT_TELEMETRY_INTERVAL = 10.0
DEFAULT_HEARTBEAT_INTERVAL = 30.0
DEFAULT_RATE_LIMIT_RETRY = 30.0
HOOK_TIMEOUT = 120.0


class Stats:
    """Counters shared by all simulated boxes (or owned by a single agent)."""

    __slots__ = ("acked", "commands", "connected", "errors", "sent", "sessions", "stopped", "unauthorized")

    def __init__(self) -> None:
        self.connected = 0
        self.sent = 0
        self.acked = 0
        self.errors = 0
        self.sessions = 0
        self.stopped = 0
        self.unauthorized = 0
        self.commands = 0


class _Outcome:
    __slots__ = ("close_code", "retry_after", "sim_reboot", "unauthorized", "welcomed")

    def __init__(self) -> None:
        self.close_code: Optional[int] = None
        self.retry_after: Optional[float] = None
        self.unauthorized = False
        self.sim_reboot = False
        self.welcomed = False


async def _to_thread(fn: Callable[..., Any], *args: Any) -> Any:
    return await asyncio.get_running_loop().run_in_executor(None, fn, *args)


class Agent:
    def __init__(
        self,
        *,
        server: str,
        token: str,
        serial: str,
        collector: Any,
        store: Any,
        log: Optional[Logger] = None,
        status: Optional[Status] = None,
        state_dir: Optional[str] = None,
        apply_hook: Optional[str] = None,
        stats: Optional[Stats] = None,
        backoff: Optional[Backoff] = None,
        telemetry_interval: Optional[float] = None,
        simulated: bool = False,
        fetch_config: bool = True,
        reboot_command: str = "reboot",
        restart_command: str = "/etc/init.d/network restart",
        connect_semaphore: Optional[asyncio.Semaphore] = None,
        http_semaphore: Optional[asyncio.Semaphore] = None,
        ping_interval: Optional[float] = 20.0,
        flaky: bool = False,
        sim_reboot_delay: float = 3.0,
        first_tick_delay: Optional[float] = None,
        ws_url: Optional[str] = None,
    ) -> None:
        self.server = server.rstrip("/")
        self.ws_url = ws_url or os.environ.get("OTB_AGENT_WS_URL") or httpapi.ws_url(self.server)
        self.token = token
        self.serial = serial
        self.collector = collector
        self.store = store
        self.log = log or Logger(level="warning")
        self.status = status
        self.state_dir = state_dir
        self.apply_hook = apply_hook
        self.stats = stats or Stats()
        self.backoff = backoff or Backoff()
        self.interval_override = telemetry_interval
        self.telemetry_interval = telemetry_interval or DEFAULT_TELEMETRY_INTERVAL
        self.heartbeat_interval = DEFAULT_HEARTBEAT_INTERVAL
        self.simulated = simulated
        self.fetch_config_enabled = fetch_config
        self.reboot_command = reboot_command
        self.restart_command = restart_command
        self.connect_semaphore = connect_semaphore
        self.http_semaphore = http_semaphore
        self.ping_interval = ping_interval
        self.flaky = flaky
        self.sim_reboot_delay = sim_reboot_delay

        self.ws: Any = None
        self.session_id: Optional[str] = None
        self.welcomed = False
        self.stopping = False
        self.applied_hash: Optional[str] = store.meta_get("applied_config_hash")
        self.last_acked_seq = 0
        self._inflight: Set[int] = set()
        self._sent_upto = 0
        self._pumping = False
        self._pump_again = False
        self._last_send = 0.0
        self._last_recv = 0.0
        self._next_collect = time.monotonic() + (first_tick_delay if first_tick_delay is not None else 0.0)
        self._collecting = False
        self._error_retry_after: Optional[float] = None
        self._running_cmds: Set[str] = set()
        self._unsent_results: Dict[str, Dict[str, Any]] = {}
        self._tasks: Set[asyncio.Task] = set()
        self._config_running = False
        self._config_dirty = False
        self._speed_test_lock: Optional[asyncio.Lock] = None  # made in the loop (Python 3.9)
        self._sim_reboot_requested = False
        self._stop_event: Optional[asyncio.Event] = None
        self._state = "starting"

    # ------------------------------------------------------------------ helpers
    def _spawn(self, coro: Any) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _set_state(self, state: str, **fields: Any) -> None:
        if state != self._state:
            self._state = state
            self.log.debug("state", state=state, **fields)
        if self.status is not None:
            self.status.set(state=state, **fields)
            self._status_counts()
            self.status.flush(force=True)

    def _status_counts(self) -> None:
        if self.status is not None:
            self.status.set(
                buffer_depth=self.store.depth(),
                dropped_total=self.store.dropped_total,
                last_acked_seq=self.last_acked_seq,
                applied_config_hash=self.applied_hash,
            )

    def _error(self, event: str, message: str, level: str = "warning", **fields: Any) -> None:
        self.stats.errors += 1
        self.log.log(level, event, message=message, **fields)
        if self.status is not None:
            self.status.error(event, message)
            self.status.flush()

    def stop(self) -> None:
        """Request a clean shutdown (closes the current session)."""
        self.stopping = True
        if self._stop_event is not None:
            self._stop_event.set()
        ws = self.ws
        if ws is not None:
            with contextlib.suppress(RuntimeError):
                self._spawn(ws.close(protocol.CLOSE_GOING_AWAY, "agent stopping"))

    def hello(self) -> Dict[str, Any]:
        return {
            "type": "hello",
            "v": protocol.PROTOCOL_VERSION,
            "agent_version": __version__,
            "firmware_version": self.collector.firmware_version()[:64],
            "model": self.collector.model()[:64],
            "applied_config_hash": self.applied_hash,
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
        url = self.ws_url
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
                            ws = await wsconnect.connect(url, self.token, ping_interval=self.ping_interval)
                    else:
                        ws = await wsconnect.connect(url, self.token, ping_interval=self.ping_interval)
                except wsconnect.HandshakeRejected as e:
                    if e.status in (401, 403):
                        self._unauthorized(f"websocket handshake rejected with HTTP {e.status}")
                        return EXIT_UNAUTHORIZED
                    retry_after = e.retry_after
                    self._error("connect_failed", str(e), status=e.status)
                except asyncio.CancelledError:
                    raise
                except Exception as e:
                    self._error("connect_failed", f"{type(e).__name__}: {e}")
                if ws is not None:
                    outcome = await self._session(ws)
                    if outcome.unauthorized:
                        self._unauthorized(f"server closed the session with {outcome.close_code}")
                        return EXIT_UNAUTHORIZED
                    retry_after = outcome.retry_after
                    if outcome.sim_reboot and not self.stopping:
                        await self._simulated_reboot()
                        continue
                if self.stopping:
                    break
                delay = self.backoff.next_delay(retry_after)
                self._set_state("backoff", session_id=None, retry_in_s=round(delay, 2))
                self.log.info("backoff", delay_s=round(delay, 2), attempt=self.backoff.attempt)
                await self._idle(delay)
        finally:
            for t in list(self._tasks):
                if not t.done():
                    t.cancel()
            self._set_state("stopped", session_id=None)
            self.stats.stopped += 1
        return EXIT_OK

    def _unauthorized(self, why: str) -> None:
        self.stats.unauthorized += 1
        self._error(
            "unauthorized",
            f"{why}: the agent token was revoked or is unknown; re-enroll the box (otb-agent enroll)",
            level="error",
        )

    async def _idle(self, delay: float) -> None:
        """Sleep (backoff), still collecting telemetry into the buffer."""
        deadline = time.monotonic() + delay
        assert self._stop_event is not None
        while not self.stopping:
            now = time.monotonic()
            if now >= deadline:
                return
            if now >= self._next_collect:
                await self._tick(now)
                continue
            try:
                await asyncio.wait_for(self._stop_event.wait(), min(deadline, self._next_collect) - now)
                return
            except asyncio.TimeoutError:
                pass

    async def _simulated_reboot(self) -> None:
        self._set_state("rebooting", session_id=None)
        self.log.info("simulated_reboot", downtime_s=self.sim_reboot_delay)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._stop_event.wait(), self.sim_reboot_delay)  # type: ignore[union-attr]
        reboot = getattr(self.collector, "reboot", None)
        if reboot is not None:
            reboot()
        self._next_collect = time.monotonic() + self.telemetry_interval

    # ------------------------------------------------------------------ session
    async def _session(self, ws: Any) -> _Outcome:
        out = _Outcome()
        closed_types = wsconnect.connection_closed_types()
        self.ws = ws
        self.welcomed = False
        self._inflight = set()
        self._sent_upto = 0
        self._error_retry_after = None
        started = time.monotonic()
        try:
            await ws.send(protocol.encode(self.hello()))
            self._last_send = time.monotonic()
            first = await asyncio.wait_for(ws.recv(), HELLO_TIMEOUT)
            msg = protocol.decode(first, ignore_unknown_fields=True)
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
        except closed_types as e:
            out.close_code = wsconnect.close_code(e)
        except asyncio.TimeoutError:
            self._error("session_timeout", "no frame from the server in time")
        except ProtocolError as e:
            self._error("protocol_error", str(e), field=e.field_path)
            await self._close(ws, 1002, "protocol error")
        except asyncio.CancelledError:
            await self._close(ws, protocol.CLOSE_GOING_AWAY, "agent stopping")
            raise
        except OSError as e:
            self._error("session_io_error", f"{type(e).__name__}: {e}")
        finally:
            if out.welcomed:
                self.stats.connected -= 1
                self.backoff.session_ended(time.monotonic())
            self.ws = None
            self.welcomed = False
            self.session_id = None
        code = out.close_code
        if self._sim_reboot_requested:
            self._sim_reboot_requested = False
            out.sim_reboot = True
        if code is not None and not self.stopping:
            name = protocol.CLOSE_CODE_NAMES.get(code, "unknown")
            level = "info" if code in (protocol.CLOSE_NORMAL, protocol.CLOSE_SERVICE_RESTART) else "warning"
            if code == protocol.CLOSE_UNAUTHORIZED:
                out.unauthorized = True
            elif code == protocol.CLOSE_RATE_LIMITED:
                out.retry_after = self._error_retry_after or DEFAULT_RATE_LIMIT_RETRY
            elif self._error_retry_after:
                out.retry_after = self._error_retry_after
            if not out.unauthorized and not out.sim_reboot:
                self._error("session_closed", f"closed by server: {code} {name}", level=level, code=code)
        return out

    async def _close(self, ws: Any, code: int, reason: str) -> None:
        with contextlib.suppress(Exception):  # best effort
            await asyncio.wait_for(ws.close(code, reason), 5)

    async def _loop(self, ws: Any) -> None:
        recv_timeout = max(4 * self.heartbeat_interval, 120.0)
        self._last_recv = time.monotonic()
        while not self.stopping:
            now = time.monotonic()
            hb_due = self._last_send + self.heartbeat_interval
            timeout = min(self._next_collect, hb_due, self._last_recv + recv_timeout) - now
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
                if self._sim_reboot_requested:
                    await self._close(ws, protocol.CLOSE_GOING_AWAY, "rebooting")
                    return
            if now >= self._next_collect:
                await self._tick(now)
                if self.flaky and self.collector.rng.random() < 0.02:
                    self.log.info("simulated_link_loss")
                    wsconnect.abort(ws)
                    return
            if now - self._last_recv > recv_timeout:
                self._error("session_stale", f"nothing received for {recv_timeout:.0f}s")
                await self._close(ws, protocol.CLOSE_GOING_AWAY, "stale")
                return
            if now - self._last_send >= self.heartbeat_interval:
                await self._send({"type": "heartbeat", "ts": round(time.time(), 3)})

    async def _send(self, msg: Dict[str, Any]) -> bool:
        ws = self.ws
        if ws is None:
            return False
        try:
            await ws.send(protocol.encode(msg))
        except ProtocolError as e:
            self._error("encode_failed", str(e), level="error", type=msg.get("type"))
            return False
        except Exception as e:
            self.log.debug("send_failed", error=repr(e))
            return False
        self._last_send = time.monotonic()
        return True

    # ------------------------------------------------------------------ telemetry
    async def _tick(self, now: float) -> None:
        interval = self.telemetry_interval
        self._next_collect += interval
        if self._next_collect <= now:
            self._next_collect = now + interval
        if self.collector.blocking:
            if not self._collecting:
                self._collecting = True
                self._spawn(self._collect_blocking())
            return
        self._enqueue(self.collector.collect())
        await self._pump()

    async def _collect_blocking(self) -> None:
        try:
            sample = await _to_thread(self.collector.collect)
            self._enqueue(sample)
        except Exception as e:
            self._error("collect_failed", repr(e))
        finally:
            self._collecting = False
        await self._pump()

    def _enqueue(self, sample: Dict[str, Any]) -> None:
        try:
            protocol.validate_message({"type": "telemetry", "seq": 1, "samples": [sample]})
        except ProtocolError as e:
            self._error("invalid_sample", str(e), level="error", field=e.field_path)
            return
        self.store.append([sample])
        if self.status is not None:
            self._status_counts()
            self.status.flush()

    async def _pump(self) -> None:
        """Send queued telemetry, oldest first, keeping at most WINDOW frames unacked."""
        if self._pumping:
            self._pump_again = True
            return
        self._pumping = True
        try:
            while True:
                self._pump_again = False
                ws = self.ws
                if ws is None or not self.welcomed:
                    return
                room = WINDOW - len(self._inflight)
                if room <= 0:
                    return
                batch = self.store.pending(self._sent_upto, room)
                for seq, text in batch:
                    try:
                        await ws.send(text)
                    except Exception as e:  # the session loop notices the closed connection
                        self.log.debug("send_failed", error=repr(e))
                        return
                    self._inflight.add(seq)
                    self._sent_upto = seq
                    self._last_send = time.monotonic()
                    self.stats.sent += 1
                if not self._pump_again and len(batch) < room:
                    return
                if not batch:
                    return
        finally:
            self._pumping = False

    # ------------------------------------------------------------------ frames
    async def _on_welcome(self, msg: Dict[str, Any]) -> None:
        self.session_id = msg["session_id"]
        if self.interval_override is None:
            self.telemetry_interval = float(msg["telemetry_interval_s"])
        self.heartbeat_interval = float(msg["heartbeat_interval_s"])
        last = msg["last_acked_seq"]
        removed = self.store.ack_upto(last)
        self.last_acked_seq = max(self.last_acked_seq, last)
        self.welcomed = True
        self.log.info(
            "connected",
            session_id=self.session_id,
            last_acked_seq=last,
            removed=removed,
            depth=self.store.depth(),
        )
        self._set_state("connected", session_id=self.session_id, connected_since=time.time(), retry_in_s=None)
        for result in list(self._unsent_results.values()):
            if await self._send(result):
                self._unsent_results.pop(result["id"], None)
        desired = msg.get("desired_config_hash")
        if self.fetch_config_enabled and desired and desired != self.applied_hash:
            self._spawn(self.config_cycle())
        for cmd in msg.get("pending_commands") or []:
            await self._on_command(cmd)
        await self._pump()

    async def _on_frame(self, raw: Any) -> None:
        try:
            msg = protocol.decode(raw, ignore_unknown_fields=True)
        except UnknownMessageType as e:
            self.log.info("unknown_message_type_ignored", message=e.message)
            return
        except ProtocolError as e:
            self._error("invalid_frame", str(e), field=e.field_path)
            return
        t = msg["type"]
        if t == "ack":
            seq = msg["seq"]
            if self.store.ack(seq):
                self.stats.acked += 1
            self._inflight.discard(seq)
            if seq > self.last_acked_seq:
                self.last_acked_seq = seq
            if self.status is not None:
                self._status_counts()
                self.status.flush()
            await self._pump()
        elif t == "heartbeat":
            pass
        elif t == "config_changed":
            if self.fetch_config_enabled and msg["desired_config_hash"] != self.applied_hash:
                self._spawn(self.config_cycle())
        elif t == "command":
            await self._on_command(msg)
        elif t == "error":
            self._on_error_frame(msg)
        else:
            self.log.info("unexpected_message_ignored", type=t)

    def _on_error_frame(self, msg: Dict[str, Any]) -> None:
        if msg.get("retry_after_s") is not None:
            self._error_retry_after = float(msg["retry_after_s"])
        self._error(
            "server_error", f"{msg['code']}: {msg['message']}", code=msg["code"], field=msg.get("field")
        )

    # ------------------------------------------------------------------ config
    async def config_cycle(self) -> Dict[str, Any]:
        """Fetch + apply + report; coalesces concurrent triggers into one more round."""
        if self._config_running:
            self._config_dirty = True
            return {"queued": True}
        self._config_running = True
        result: Dict[str, Any] = {}
        try:
            while True:
                self._config_dirty = False
                if self.http_semaphore is not None:
                    async with self.http_semaphore:
                        result = await self._refresh_config()
                else:
                    result = await self._refresh_config()
                if not self._config_dirty:
                    break
        finally:
            self._config_running = False
        return result

    def _config_path(self) -> Optional[str]:
        return os.path.join(self.state_dir, CONFIG_FILE) if self.state_dir else None

    async def _refresh_config(self) -> Dict[str, Any]:
        path = self._config_path()
        saved = read_json(path) if path else None
        have = saved.get("config_hash") if isinstance(saved, dict) else (None if path else self.applied_hash)
        try:
            status, body, h = await _to_thread(httpapi.fetch_config, self.server, self.token, have)
        except Exception as e:
            self._error("config_fetch_failed", str(e))
            return {"error": f"fetch failed: {e}"}
        if status == 304:
            if h == self.applied_hash or saved is None:
                return {"config_hash": h, "changed": False, "error": None}
            body = saved
        if not isinstance(body, dict) or not h:
            self._error("config_invalid", "config body is not an object or has no hash")
            return {"error": "invalid config"}
        error: Optional[str] = None
        if path:
            write_json(path, body, mode=0o600)
        try:
            self.collector.configure(body)
        except Exception as e:
            self.log.warning("collector_configure_failed", error=repr(e))
        tis = body.get("telemetry_interval_s")
        if self.interval_override is None and type(tis) in (int, float) and tis >= 1:
            self.telemetry_interval = float(tis)
        if self.apply_hook and path:
            error = await _to_thread(run_apply_hook, self.apply_hook, path)
        try:
            await _to_thread(httpapi.post_applied, self.server, self.token, h, error)
        except Exception as e:
            self._error("config_report_failed", str(e))
        if error is None:
            self.applied_hash = h
            self.store.meta_set("applied_config_hash", h)
            self.log.info("config_applied", config_hash=h)
        else:
            self._error("config_apply_failed", error, config_hash=h)
        self._status_counts()
        if self.status is not None:
            self.status.flush(force=True)
        return {"config_hash": h, "changed": True, "error": error}

    # ------------------------------------------------------------------ commands
    async def _on_command(self, cmd: Dict[str, Any]) -> None:
        cid = cmd["id"]
        kind = cmd["kind"]
        if cid in self._running_cmds:
            await self._send(
                {"type": "command_progress", "id": cid, "progress": 0, "message": "already running"}
            )
            return
        rec = self.store.command_get(cid)
        if rec is not None:
            result = rec.get("result")
            if rec["state"] != "done" or result is None:
                # Started in an earlier agent process that did not finish it.
                if rec.get("kind") == "reboot" and rec.get("boot_id") != self.collector.boot_id():
                    result = self._result(
                        cid, True, {"rebooted": True, "previous_boot_id": rec.get("boot_id")}
                    )
                else:
                    result = self._result(cid, False, {}, "interrupted: the agent restarted while running it")
                self.store.command_finish(cid, result)
            self.log.info("command_duplicate", id=cid, kind=kind)
            await self._send_result(result)
            return
        if cmd["expires_at"] < time.time():
            result = self._result(cid, False, {}, "expired")
            self.store.command_finish(cid, result)
            await self._send_result(result)
            return
        self.store.command_start(cid, kind, self.collector.boot_id())
        self._running_cmds.add(cid)
        self.stats.commands += 1
        self.log.info("command_start", id=cid, kind=kind)
        self._spawn(self._run_command(cmd))

    @staticmethod
    def _result(cid: str, ok: bool, output: Dict[str, Any], error: Optional[str] = None) -> Dict[str, Any]:
        return {"type": "command_result", "id": cid, "ok": ok, "output": output, "error": error}

    async def _run_command(self, cmd: Dict[str, Any]) -> None:
        cid = cmd["id"]
        kind = cmd["kind"]
        params = cmd.get("params") or {}
        try:
            handler = getattr(self, f"_cmd_{kind}", None)
            if handler is None:
                result = self._result(cid, False, {}, "unsupported")
            else:
                ok, output, error = await handler(cid, params)
                result = self._result(cid, ok, output, error)
        except asyncio.CancelledError:
            self._running_cmds.discard(cid)
            raise
        except Exception as e:
            result = self._result(cid, False, {}, f"{type(e).__name__}: {e}"[:4000])
        result = _fit_result(result)
        self.store.command_finish(cid, result)
        self._running_cmds.discard(cid)
        self.log.info("command_done", id=cid, kind=kind, ok=result["ok"], error=result["error"])
        await self._send_result(result)
        if kind in ("reboot", "firmware_upgrade") and result["ok"] and self.simulated:
            self._sim_reboot_requested = True
            ws = self.ws
            if ws is not None:
                await self._close(ws, protocol.CLOSE_GOING_AWAY, "rebooting")

    async def _send_result(self, result: Dict[str, Any]) -> None:
        if self.welcomed and await self._send(result):
            self._unsent_results.pop(result["id"], None)
        else:
            self._unsent_results[result["id"]] = result

    async def _progress(self, cid: str, pct: int, message: str) -> None:
        if self.welcomed:
            await self._send(
                {"type": "command_progress", "id": cid, "progress": pct, "message": message[:512]}
            )

    def _progress_cb(self, cid: str) -> Callable[[int, str], None]:
        loop = asyncio.get_running_loop()

        def cb(pct: int, message: str) -> None:
            loop.call_soon_threadsafe(lambda: self._spawn(self._progress(cid, pct, message)))

        return cb

    async def _cmd_reboot(self, cid: str, params: Dict[str, Any]) -> "tuple":
        delay = params.get("delay_s", 0)
        if type(delay) is not int or not 0 <= delay <= 3600:
            return False, {}, "params.delay_s must be an integer 0..3600"
        if delay:
            await self._progress(cid, 5, f"rebooting in {delay}s")
            await asyncio.sleep(delay)
        await self._progress(cid, 10, "rebooting")
        if self.simulated:
            return True, {"rebooting": True, "simulated": True}, None
        res = await _to_thread(commands.run_command, commands.split_command(self.reboot_command), 60.0)
        if res["ok"]:
            return True, {"rebooting": True, "output": res["output"]}, None
        return False, {"output": res["output"]}, res["error"]

    async def _cmd_restart_services(self, cid: str, params: Dict[str, Any]) -> "tuple":
        if self.simulated:
            await asyncio.sleep(1.0)
            return True, {"restarted": True, "simulated": True}, None
        res = await _to_thread(commands.run_command, commands.split_command(self.restart_command), 120.0)
        return res["ok"], {"output": res["output"], "duration_s": res["duration_s"]}, res["error"]

    async def _cmd_diagnostics(self, cid: str, params: Dict[str, Any]) -> "tuple":
        checks = params.get("checks")
        if checks is not None and (
            not isinstance(checks, list)
            or not checks
            or any(c not in commands.DIAGNOSTIC_CHECKS for c in checks)
        ):
            return (
                False,
                {},
                "params.checks must be a non-empty subset of " + ", ".join(commands.DIAGNOSTIC_CHECKS),
            )
        out = await _to_thread(
            commands.diagnostics,
            self.server,
            self._progress_cb(cid),
            checks,
            getattr(self.collector, "tunnel_iface", None),
        )
        ok = all(c["ok"] for c in out["checks"].values())
        failed = [k for k, c in out["checks"].items() if not c["ok"]]
        return ok, out, None if ok else "failed checks: " + ", ".join(failed)

    async def _cmd_speed_test(self, cid: str, params: Dict[str, Any]) -> "tuple":
        """Download and/or upload ``bytes`` through the speedtest endpoint, optionally through one
        interface (one WAN). Output: the download's ``bytes``/``duration_s``/``mbps`` at the top level
        (as before upload existed), the upload's under ``upload``; see docs/agent-protocol.md."""
        nbytes = params.get("bytes", commands.DEFAULT_SPEEDTEST_BYTES)
        if type(nbytes) is not int or nbytes <= 0:
            return False, {}, "params.bytes must be a positive integer"
        nbytes = min(nbytes, commands.MAX_SPEEDTEST_BYTES)
        direction = params.get("direction", "download")
        if direction not in commands.SPEEDTEST_DIRECTIONS:
            return False, {}, "params.direction must be download, upload or both"
        iface = params.get("iface")
        if iface is not None:
            problem = protocol.interface_name_problem(iface)
            if problem:
                return False, {}, f"params.iface {problem}"
        simulate = self.simulated and not params.get("real")
        output: Dict[str, Any] = {"direction": direction}
        if iface is not None:
            output["iface"] = iface
        if simulate:
            output["simulated"] = True
        via = f" via {iface}" if iface is not None else ""
        if self._speed_test_lock is None:
            self._speed_test_lock = asyncio.Lock()
        if self._speed_test_lock.locked():
            await self._progress(cid, 1, "waiting for another speed test to finish")
        async with self._speed_test_lock:  # one at a time: concurrent tests would share the link
            phases = [d for d in ("download", "upload") if direction in (d, "both")]
            for index, phase in enumerate(phases):
                verb = "downloading" if phase == "download" else "uploading"
                await self._progress(cid, 5 + 50 * index, f"{verb} {nbytes} bytes{via}")
                try:
                    if simulate:
                        moved, duration = await self._simulated_speed_test(phase, nbytes, iface)
                    else:
                        test = httpapi.speedtest if phase == "download" else httpapi.speedtest_upload
                        moved, duration = await _to_thread(
                            test, self.server, self.token, nbytes, httpapi.SPEEDTEST_TIMEOUT, iface
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

    async def _simulated_speed_test(self, phase: str, nbytes: int, iface: Optional[str]) -> "tuple":
        """(bytes, seconds) of a simulated test, from the simulated WANs' capacity (or one WAN's)."""
        capacity = self.collector.capacity_mbps(upload=phase == "upload", iface=iface)
        if capacity is None:
            raise httpapi.InterfaceError(f"no network interface named {iface!r}")
        mbps = capacity * (0.6 + self.collector.rng.random() * 0.3)
        duration = nbytes * 8 / (mbps * 1e6) if mbps > 0 else 0.0
        await asyncio.sleep(min(duration, 2.0))
        return nbytes, duration

    async def _cmd_refresh_config(self, cid: str, params: Dict[str, Any]) -> "tuple":
        if self._config_running:
            while self._config_running:
                await asyncio.sleep(0.05)
        res = await self.config_cycle()
        err = res.get("error")
        return err is None, {k: v for k, v in res.items() if k != "error"}, err

    async def _cmd_firmware_upgrade(self, cid: str, params: Dict[str, Any]) -> "tuple":
        # firmware (rollouts): download with resume, verify sha256 + ed25519, apply; see firmware.py
        from . import firmware

        return await firmware.handle_command(self, cid, params)


def _speed_figures(nbytes: int, duration: float) -> Dict[str, Any]:
    mbps = nbytes * 8 / duration / 1e6 if duration > 0 else 0.0
    return {"bytes": nbytes, "duration_s": round(duration, 3), "mbps": round(mbps, 2)}


def _fit_result(result: Dict[str, Any]) -> Dict[str, Any]:
    """Make sure a command_result frame validates and fits in one frame."""
    try:
        protocol.encode(result)
        return result
    except ProtocolError as e:
        text = repr(result.get("output"))
        return {
            "type": "command_result",
            "id": result["id"],
            "ok": bool(result["ok"]),
            "output": {"truncated": True, "excerpt": text[:8000]},
            "error": (result.get("error") or f"result did not fit: {e}")[:4000],
        }


def run_apply_hook(hook: str, config_path: str, timeout: float = HOOK_TIMEOUT) -> Optional[str]:
    """Run the apply hook with the config path; None on success, else an error text."""
    import subprocess

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


def new_boot_id() -> str:
    return str(uuid.uuid4())


__all__: List[str] = ["EXIT_OK", "EXIT_UNAUTHORIZED", "Agent", "Stats", "run_apply_hook"]
