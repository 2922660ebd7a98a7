"""The agent's live websocket session (``/ws/agent/``): transport only.

Authentication happens in ``connect()`` from the ``Authorization: Bearer otba_...`` header; an
unknown or revoked token is accepted then closed with 4001, so the agent can tell "unauthorized"
from a network failure. Every frame is validated with the agent's own protocol module
(``otb_protocol``); bad frames get an ``error`` frame naming the field, and the 10th closes the
session with 4003 and a short reconnect penalty (4029). The connect and the ``hello`` go through the
per-process session gate and telemetry through the per-process writer, both batching across sessions
on their own async connections (telemetry is acknowledged only once committed). Everything else is a
call to one service through ``database_sync_to_async``; nothing here blocks the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
import uuid
import weakref
from collections.abc import Callable
from typing import Any, cast

import orjson
from channels.consumer import get_handler_name
from channels.db import database_sync_to_async
from channels.exceptions import StopConsumer
from channels.generic.websocket import AsyncWebsocketConsumer
from channels.layers import get_channel_layer
from django.conf import settings
from otb_protocol import (
    CLOSE_INVALID_FRAMES,
    CLOSE_RATE_LIMITED,
    CLOSE_REPLACED,
    CLOSE_SERVICE_RESTART,
    CLOSE_TOO_BIG,
    CLOSE_TRY_AGAIN_LATER,
    CLOSE_UNAUTHORIZED,
    CLOSE_UNSUPPORTED_VERSION,
    MAX_FRAME_BYTES,
    PROTOCOL_VERSION,
    ProtocolError,
    UnknownMessageType,
    check_unique_keys,
    validate_message,
)

from fleet.commands.services import command_complete, command_progress, commands_pending_for_box
from fleet.core.authentication import bearer_token
from fleet.core.doorbells import AGENT_SESSION_REPLACE, agent_group, agroup_send
from fleet.core.errors import DomainError
from fleet.core.metrics import (
    AGENT_FRAMES_INVALID,
    AGENT_SESSIONS,
    AGENT_SESSIONS_CLOSED,
    AGENT_SESSIONS_OPENED,
    AGENT_SESSIONS_REFUSED,
    TELEMETRY_ACK_SECONDS,
    TELEMETRY_ACKED,
    TELEMETRY_RECEIVED,
    TELEMETRY_REJECTED,
)
from fleet.live.gate import SessionsUnavailable, get_session_gate
from fleet.telemetry import services
from fleet.telemetry.writer import StorageUnavailable, TelemetryRejected, get_writer

logger = logging.getLogger(__name__)
session_log = logging.getLogger("otb.sessions")

MAX_INVALID_FRAMES = 10
# Well under the channel layer's Redis pool (max_connections in settings.CHANNEL_LAYERS).
GROUP_OPERATIONS_IN_FLIGHT = 200
_dumps = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode


# Every agent frame is parsed with orjson: 4.4 vs 18.4 us for a telemetry frame of 4 WANs, ~5 % of the
# server's CPU per message. It accepts only standard JSON (NaN, Infinity and lone surrogates are errors;
# nesting is limited to 1024) and raises ``orjson.JSONDecodeError``, a ``ValueError``.
_loads = orjson.loads
_canonical = orjson.dumps


def _may_repeat_a_key(text: str, message: Any) -> bool:
    """Whether the frame ``text`` (parsed as ``message``) may name a key twice in an object, which the
    protocol refuses (docs/agent-protocol.md) and orjson hides (the last value wins).

    Each key/value pair of the text has one ``:`` outside strings, and a string keeps its colons when
    parsed and re-serialised; a pair dropped for a repeated key takes at least its own ``:`` with it.
    So the parsed frame re-serialised has as many ``:`` as the text unless a key was repeated, or the
    text has an escape (``\\u003a`` is a colon): only then (or when the frame nests deeper than orjson
    serialises) is the text parsed again by the protocol's reference check, which names the key. About
    2 us per telemetry frame of 4 WANs, against 3 us for its parse and 14 us for its validation; agents
    send escapes only in strings that need them (their JSON is not ASCII-only)."""
    if "\\" in text:
        return True
    try:
        return _canonical(message).count(b":") != text.count(":")
    except orjson.JSONEncodeError:
        return True


_group_semaphores: weakref.WeakKeyDictionary[Any, asyncio.Semaphore] = weakref.WeakKeyDictionary()


def _group_slots() -> asyncio.Semaphore:
    """Bounds this process's concurrent channel-layer calls of session starts and ends (replace
    announcement, group join and leave): when ten thousand sessions leave or come back at once,
    unbounded they asked Redis for more connections than the channel layer's pool holds ("Too many
    connections")."""
    loop = asyncio.get_running_loop()
    semaphore = _group_semaphores.get(loop)
    if semaphore is None:
        semaphore = _group_semaphores[loop] = asyncio.Semaphore(GROUP_OPERATIONS_IN_FLIGHT)
    return semaphore


def _header(scope: dict[str, Any], name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            try:
                return value.decode("latin-1")
            except UnicodeDecodeError:  # pragma: no cover - latin-1 decodes any byte
                return None
    return None


class LeanDispatchMixin:
    """Channels' consumer loop without its per-message overhead, for consumers on the hot path.

    Channels' ``await_many_dispatch`` waits on the websocket and the channel layer with
    ``asyncio.wait`` and creates a new task after every message: at thousands of frames per second
    that was ~10 % of the ingest CPU. Here the websocket is read in a plain loop and the channel layer
    by one long-lived task; a lock keeps Channels' guarantee that one message is dispatched at a time.
    A ``StopConsumer`` (or error) raised while dispatching a channel-layer message ends the consumer
    as it does in Channels.
    """

    channel_layer_alias: str
    channel_layer: Any
    channel_name: str

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        consumer = cast(Any, self)
        consumer.scope = scope
        consumer.base_send = send
        self.channel_layer = get_channel_layer(self.channel_layer_alias)
        lock = asyncio.Lock()
        this_task = asyncio.current_task()
        failure: list[BaseException] = []

        async def from_layer() -> None:
            try:
                while True:
                    message = await self.channel_layer.receive(self.channel_name)
                    async with lock:
                        await consumer.dispatch(message)
            except asyncio.CancelledError:
                raise
            except BaseException as exc:  # StopConsumer or a crash ends the consumer, as in Channels
                failure.append(exc)
                cast(asyncio.Task, this_task).cancel()

        reader = None
        if self.channel_layer is not None:
            self.channel_name = await self.channel_layer.new_channel()
            reader = asyncio.get_running_loop().create_task(from_layer())
        try:
            while True:
                message = await receive()
                async with lock:
                    await consumer.dispatch(message)
        except StopConsumer:
            pass
        except asyncio.CancelledError:
            if not failure:
                raise  # the server cancelled us
            cast(asyncio.Task, this_task).uncancel()
            if not isinstance(failure[0], StopConsumer):
                raise failure[0] from None
        finally:
            if reader is not None:
                reader.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reader


class AgentConsumer(LeanDispatchMixin, AsyncWebsocketConsumer):
    """One live session of one box (a newer session of the same box replaces it: 4002)."""

    # Sessions currently served by this process (load shedding beyond MAX_SESSIONS_PER_PROCESS).
    active_sessions = 0

    async def connect(self) -> None:
        self.opened_at = time.perf_counter()
        self.box_id: uuid.UUID | None = None
        self.organization_id: Any = None
        self.session_id = uuid.uuid4().hex
        self.invalid_frames = 0
        self.said_hello = False
        self.counted = False
        self.closing = False
        self.pending: set[asyncio.Task] = set()

        limit = cast(int, settings.OTB.get("MAX_SESSIONS_PER_PROCESS", 20000))
        if AgentConsumer.active_sessions >= limit:
            await self._refuse("overloaded", "too many sessions on this server", retry_after_s=10.0)
            return
        token = bearer_token(_header(self.scope, b"authorization"))
        try:
            grant = await get_session_gate().connect(token=token, session_id=self.session_id)
        except Exception as exc:
            if isinstance(exc, SessionsUnavailable):
                logger.warning("agent session refused: %s", exc)
            else:
                logger.exception("agent session connect failed")
            await self._refuse(
                "unavailable", "the server cannot serve sessions right now", retry_after_s=10.0
            )
            return
        if grant is None:
            AGENT_SESSIONS_REFUSED.labels("unauthorized").inc()
            await self.accept()
            await self._send({"type": "error", "code": "unauthorized", "message": "unknown or revoked token"})
            await self._close(CLOSE_UNAUTHORIZED)
            return
        if grant.retry_after_s > 0:
            await self._refuse("rate_limited", "too many invalid frames; retry later", grant.retry_after_s)
            return
        box_id = self.box_id = cast(uuid.UUID, grant.box_id)
        self.organization_id = grant.organization_id
        AgentConsumer.active_sessions += 1
        self.counted = True
        AGENT_SESSIONS_OPENED.inc()
        session_log.info(
            "agent_session_opened",
            extra={
                "box_id": str(box_id),
                "organization_id": str(self.organization_id),
                "session_id": self.session_id,
            },
        )
        # Older sessions of the box close (4002) on this; sent before joining the group so that this
        # session does not receive its own message. The database decides between two new sessions
        # racing: the hello of the one that lost the upsert gets no welcome and closes.
        async with _group_slots():
            await agroup_send(
                agent_group(box_id), {"type": AGENT_SESSION_REPLACE, "session_id": self.session_id}
            )
        for attempt in range(4):
            try:
                async with _group_slots():
                    await self.channel_layer.group_add(agent_group(box_id), self.channel_name)
                break
            except Exception:  # without the doorbell the session still works; hello re-syncs state
                if attempt == 3:
                    logger.warning("joining %s failed", agent_group(box_id), exc_info=True)
                else:
                    await asyncio.sleep(random.uniform(0.05, 0.3) * (attempt + 1))
        await self.accept()

    async def disconnect(self, code: int) -> None:
        for task in list(self.pending):
            task.cancel()
        if not self.counted:
            return
        AgentConsumer.active_sessions -= 1
        self.counted = False
        AGENT_SESSIONS_CLOSED.labels(str(code)).inc()
        session_log.info(
            "agent_session_closed",
            extra={
                "box_id": str(self.box_id),
                "organization_id": str(self.organization_id),
                "session_id": self.session_id,
                "code": code,
                "duration_s": round(time.perf_counter() - self.opened_at, 1),
            },
        )
        try:
            async with _group_slots():
                await self.channel_layer.group_discard(
                    agent_group(cast(uuid.UUID, self.box_id)), self.channel_name
                )
        except Exception:
            logger.warning("leaving %s failed", agent_group(cast(uuid.UUID, self.box_id)), exc_info=True)
        if code == CLOSE_SERVICE_RESTART:
            # This server is shutting down (uvicorn closes every session with 1012): the box comes
            # back within seconds, here or on another process, and its hello takes the session over.
            # Marking thousands of boxes offline on the way down (a transaction and two events each)
            # would hold up the shutdown and fill every timeline with offline/online pairs; a box
            # that does not come back is marked offline by the presence sweep (three missed
            # heartbeats).
            return
        try:
            await get_session_gate().disconnect(
                box_id=cast(uuid.UUID, self.box_id), session_id=self.session_id, code=code
            )
        except Exception:  # the presence sweep will mark it offline
            logger.exception("closing session of box %s failed", self.box_id)

    async def dispatch(self, message: dict[str, Any]) -> None:
        """Channels' dispatch without its per-message ``aclose_old_connections()``: that is a hop to
        the single sync thread for EVERY frame (it dominated the ingest profile), and this consumer
        never touches the ORM on the event loop: its DB calls run in ``database_sync_to_async``,
        which closes stale connections itself."""
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            raise ValueError(f"No handler for message type {message['type']}")
        await handler(message)

    # -- frames from the agent ------------------------------------------------------------------
    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if self.closing or self.box_id is None:
            return
        if text_data is None:
            if bytes_data is not None and len(bytes_data) > MAX_FRAME_BYTES:
                await self._close(CLOSE_TOO_BIG)
                return
            await self._invalid("frames must be JSON text", "")
            return
        if len(text_data) > MAX_FRAME_BYTES or (
            len(text_data) * 4 > MAX_FRAME_BYTES
            and len(text_data.encode("utf-8", "replace")) > MAX_FRAME_BYTES
        ):
            await self._close(CLOSE_TOO_BIG)
            return
        try:
            message = _loads(text_data)
        except (ValueError, RecursionError) as exc:
            await self._invalid(f"invalid JSON: {str(exc)[:200]}", "")
            return
        try:
            if _may_repeat_a_key(text_data, message):
                check_unique_keys(text_data)
            validate_message(message)
        except UnknownMessageType as exc:
            await self._invalid(exc.message, exc.field_path, code="unknown_type")
            return
        except ProtocolError as exc:
            await self._invalid(exc.message, exc.field_path)
            return
        kind = message["type"]
        if kind == "telemetry" and self.said_hello:
            self._spawn(self._telemetry(message))
        elif kind == "heartbeat":
            get_writer().touch(self.box_id)
            await self._send({"type": "heartbeat", "ts": time.time()})
        elif kind == "hello":
            await self._hello(message)
        elif not self.said_hello:
            await self._invalid("the first frame must be hello", "type", code="hello_required")
        elif kind == "command_progress":
            await self._command_progress(message)
        elif kind == "command_result":
            await self._command_result(message)
        elif kind == "error":
            logger.info("agent of box %s reported %s: %s", self.box_id, message["code"], message["message"])
        else:
            await self._invalid(f"{kind} is not sent by agents", "type", code="unknown_type")

    async def _hello(self, message: dict[str, Any]) -> None:
        if message["v"] != PROTOCOL_VERSION:
            await self._send(
                {
                    "type": "error",
                    "code": "unsupported_version",
                    "message": f"protocol version {message['v']} is not spoken here; this server speaks "
                    f"version {PROTOCOL_VERSION}",
                    "field": "v",
                }
            )
            await self._close(CLOSE_UNSUPPORTED_VERSION)
            return
        try:
            welcome = await get_session_gate().hello(
                box_id=cast(uuid.UUID, self.box_id), session_id=self.session_id, hello=message
            )
        except Exception:
            logger.exception("hello of box %s failed", self.box_id)
            await self._send(
                {"type": "error", "code": "unavailable", "message": "hello failed", "retry_after_s": 5}
            )
            return
        if welcome is None:  # replaced meanwhile
            await self._close(CLOSE_REPLACED)
            return
        commands = []
        for command in welcome["pending_commands"]:
            try:
                validate_message(command)
                commands.append(command)
            except ProtocolError:
                logger.warning("dropping malformed pending command for box %s", self.box_id)
        welcome["pending_commands"] = commands
        self.said_hello = True
        await self._send(welcome)

    async def _telemetry(self, message: dict[str, Any]) -> None:
        seq = message["seq"]
        TELEMETRY_RECEIVED.inc()
        received = time.perf_counter()
        try:
            await get_writer().submit(
                box_id=cast(uuid.UUID, self.box_id),  # receive() drops frames before the box is known
                organization_id=self.organization_id,
                session_id=self.session_id,
                seq=seq,
                samples=message["samples"],
                dropped=message.get("dropped"),
            )
        except StorageUnavailable as exc:
            TELEMETRY_REJECTED.labels("storage_unavailable").inc()
            await self._send(
                {
                    "type": "error",
                    "code": "storage_unavailable",
                    "message": f"telemetry seq {seq} not stored; resend later",
                    "retry_after_s": exc.retry_after_s,
                }
            )
            # The agent holds the frame in flight until an ack: without a new session it would stall
            # once its window is full of refused frames. It reconnects after retry_after_s and resends
            # everything not acked (the welcome's last_acked_seq says where to start).
            await self._close(CLOSE_TRY_AGAIN_LATER)
            return
        except TelemetryRejected as exc:
            TELEMETRY_REJECTED.labels("rejected").inc()
            await self._send(
                {"type": "error", "code": "rejected", "message": str(exc)[:1000], "field": "samples"}
            )
            return
        await self._send({"type": "ack", "seq": seq})
        TELEMETRY_ACKED.inc()
        TELEMETRY_ACK_SECONDS.observe(time.perf_counter() - received)

    async def _command_progress(self, message: dict[str, Any]) -> None:
        await self._command_call(
            command_progress,
            box_id=self.box_id,
            command_id=message["id"],
            progress=message["progress"],
            message=message["message"],
        )

    async def _command_result(self, message: dict[str, Any]) -> None:
        await self._command_call(
            command_complete,
            box_id=self.box_id,
            command_id=message["id"],
            ok=message["ok"],
            output=message["output"],
            error=message["error"],
        )

    async def _command_call(self, service: Callable[..., Any], **kwargs: Any) -> None:
        """Run a command service off the event loop; a refusal becomes an ``error`` frame naming the
        field, anything else a logged ``unavailable``."""
        try:
            await database_sync_to_async(service)(**kwargs)
        except DomainError as exc:
            await self._send(
                {"type": "error", "code": exc.code, "message": exc.message[:1000], "field": exc.field or "id"}
            )
        except Exception:
            logger.exception("%s failed for box %s", service.__name__, self.box_id)
            await self._send({"type": "error", "code": "unavailable", "message": "the command update failed"})

    # -- doorbells from the channel layer ------------------------------------------------------------
    async def session_replace(self, event: dict[str, Any]) -> None:
        if event.get("session_id") != self.session_id:
            await self._send(
                {"type": "error", "code": "replaced", "message": "a newer session replaced this one"}
            )
            await self._close(CLOSE_REPLACED)

    async def config_changed(self, event: dict[str, Any]) -> None:
        if self.said_hello and event.get("config_hash"):
            await self._send({"type": "config_changed", "desired_config_hash": event["config_hash"]})

    async def command_doorbell(self, event: dict[str, Any]) -> None:
        if not self.said_hello:
            return  # the welcome carries the pending commands
        try:
            commands = await database_sync_to_async(commands_pending_for_box)(box_id=self.box_id)
        except Exception:
            logger.exception("fetching pending commands of box %s failed", self.box_id)
            return
        for command in commands:
            try:
                validate_message(command)
            except ProtocolError:
                logger.warning("dropping malformed command for box %s", self.box_id)
                continue
            await self._send(command)

    async def people_event(self, event: dict[str, Any]) -> None:
        """Broadcasts for people are never forwarded to agents."""

    # -- helpers -------------------------------------------------------------------------------------
    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self.pending.add(task)
        task.add_done_callback(self.pending.discard)

    async def _invalid(self, message: str, field: str, *, code: str = "invalid_frame") -> None:
        self.invalid_frames += 1
        AGENT_FRAMES_INVALID.labels(code).inc()
        body: dict[str, Any] = {"type": "error", "code": code, "message": message[:1000]}
        if field:
            body["field"] = field[:256]
        await self._send(body)
        if self.invalid_frames >= MAX_INVALID_FRAMES:
            try:
                await database_sync_to_async(services.agent_session_penalize)(box_id=self.box_id)
            except Exception:
                logger.warning("could not record the penalty of box %s", self.box_id, exc_info=True)
            await self._close(CLOSE_INVALID_FRAMES)

    async def _refuse(self, code: str, message: str, retry_after_s: float) -> None:
        AGENT_SESSIONS_REFUSED.labels(code).inc()
        await self.accept()
        await self._send({"type": "error", "code": code, "message": message, "retry_after_s": retry_after_s})
        await self._close(CLOSE_RATE_LIMITED)

    async def _send(self, message: dict[str, Any]) -> None:
        if self.closing:
            return
        try:
            await self.send(text_data=_dumps(message))
        except Exception:  # the peer went away: disconnect() cleans up
            logger.debug("send to box %s failed", self.box_id, exc_info=True)

    async def _close(self, code: int) -> None:
        if self.closing:
            return
        self.closing = True
        try:
            await self.close(code=code)
        except Exception:
            logger.debug("close of box %s session failed", self.box_id, exc_info=True)


AGENT_SESSIONS.set_function(lambda: AgentConsumer.active_sessions)
