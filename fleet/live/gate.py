"""The session gate: the connect and the ``hello`` of every agent session of this process, batched.

A server restart brings every box of the process back within seconds. Done one session at a time
(a thread hop, the ORM, a transaction of six statements and two broadcasts each), that storm cost
about 10 ms of server CPU per session. Here each kind of call waits only for the batch in flight, and
all that arrived meanwhile are served by the next one, on the loop's own psycopg connection:

- ``connect``: ONE lookup of all the tokens (live credential, box not decommissioned, reconnect
  penalty), then ONE upsert making each session its box's current one;
- ``hello``: ONE transaction: lock the status rows (box order, like the telemetry writer: no
  deadlocks), mark the boxes online with what they report, update the versions of the boxes that
  report new ones (audited), insert the timeline events (``session_opened``, ``box_online``,
  ``firmware_changed``), and find which boxes have commands waiting.

After the commit each ``welcome`` is resolved; boxes with waiting commands fetch them through
``commands_pending_for_box`` (rare; one implementation of delivery), and presence and events are
broadcast to people from the loop. A data error in a batch replays its hellos one by one, so one bad
frame cannot refuse the others; a lost connection fails the batch and nothing is half-written.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast
from uuid import UUID

import psycopg
from channels.db import database_sync_to_async
from django.conf import settings

from fleet.commands.choices import DELIVERABLE_STATES
from fleet.commands.services import commands_pending_for_box
from fleet.core.audit import AUDIT_INSERT_SQL, Actor, audit_sql_row
from fleet.core.doorbells import abroadcast_to_people
from fleet.core.events import EVENTS_INSERT_SQL, aevents_broadcast, event_rows
from fleet.core.live_connections import DISCONNECTED, LiveConnections
from fleet.core.tokens import TokenKind, digest, token_kind

logger = logging.getLogger(__name__)

MAX_TOKEN_LENGTH = 200
MAX_PENDING_COMMANDS = 100

CONNECT_LOOKUP_SQL = """
SELECT r.i, c.box_id, b.organization_id, b.serial, s.penalty_until
FROM unnest(%s::text[]) WITH ORDINALITY AS r(token_hash, i)
JOIN fleet_agentcredential c ON c.token_hash = r.token_hash AND c.revoked_at IS NULL
JOIN fleet_box b ON b.id = c.box_id AND b.decommissioned_at IS NULL
LEFT JOIN telemetry_boxstatus s ON s.box_id = c.box_id
"""
CLAIM_SESSIONS_SQL = """
INSERT INTO telemetry_boxstatus (box_id, online, session_id, connected_at, last_seq, boot_id,
    agent_version, firmware_version, wans_up, wans_total, dropped_samples, updated_at)
SELECT v.box_id, false, v.session_id, now(), 0, '', '', '', 0, 0, 0, now()
FROM unnest(%s::uuid[], %s::text[]) AS v(box_id, session_id)
ON CONFLICT (box_id) DO UPDATE SET
    session_id = EXCLUDED.session_id, connected_at = EXCLUDED.connected_at, updated_at = EXCLUDED.updated_at
"""
HELLO_LOCK_SQL = """
SELECT s.box_id, s.session_id, s.online, s.firmware_version, s.last_seq,
    b.serial, b.organization_id, b.config_hash, b.firmware_version, b.agent_version
FROM telemetry_boxstatus s JOIN fleet_box b ON b.id = s.box_id
WHERE s.box_id = ANY(%s) ORDER BY s.box_id FOR UPDATE OF s
"""
HELLO_STATUS_SQL = """
UPDATE telemetry_boxstatus AS s SET online = true, offline_since = NULL, last_seen_at = %s,
    boot_id = v.boot_id, uptime_s = v.uptime_s, agent_version = v.agent_version,
    firmware_version = v.firmware_version, dropped_samples = v.dropped, updated_at = %s
FROM unnest(%s::uuid[], %s::text[], %s::int8[], %s::text[], %s::text[], %s::int8[])
    AS v(box_id, boot_id, uptime_s, agent_version, firmware_version, dropped)
WHERE s.box_id = v.box_id
"""
HELLO_VERSIONS_SQL = """
UPDATE fleet_box AS b SET firmware_version = v.firmware_version, agent_version = v.agent_version,
    updated_at = %s
FROM unnest(%s::uuid[], %s::text[], %s::text[]) AS v(id, firmware_version, agent_version)
WHERE b.id = v.id
"""
CLOSE_LOCK_SQL = """
SELECT s.box_id, s.session_id, s.online, b.organization_id
FROM telemetry_boxstatus s JOIN fleet_box b ON b.id = s.box_id
WHERE s.box_id = ANY(%s) ORDER BY s.box_id FOR UPDATE OF s
"""
CLOSE_STATUS_SQL = """
UPDATE telemetry_boxstatus SET online = false, disconnected_at = %s,
    offline_since = CASE WHEN online THEN %s ELSE offline_since END, updated_at = %s
WHERE box_id = ANY(%s)
"""
WAITING_COMMANDS_SQL = (
    "SELECT DISTINCT box_id FROM commands_command "
    "WHERE box_id = ANY(%s) AND state = ANY(%s) AND expires_at > %s"
)


class SessionsUnavailable(Exception):
    """The batch could not be committed (database down or overloaded); nothing was written."""


@dataclass(frozen=True)
class SessionGrant:
    """The outcome of a websocket connect: a box to serve, or a penalty still running."""

    box_id: UUID | None
    organization_id: UUID | None = None
    serial: str = ""
    retry_after_s: float = 0.0


@dataclass(slots=True)
class _Connect:
    token_hash: str
    session_id: str
    future: asyncio.Future = field(repr=False)


@dataclass(slots=True)
class _Hello:
    box_id: UUID
    session_id: str
    firmware: str
    agent_version: str
    boot_id: str
    uptime_s: int
    dropped: int
    future: asyncio.Future = field(repr=False)


@dataclass(slots=True)
class _Close:
    box_id: UUID
    session_id: str
    code: int | None
    future: asyncio.Future = field(repr=False)


@dataclass(slots=True)
class _Outcome:
    """What a committed hello or close batch hands to its finish step: a result per session id,
    the presence changes and events to broadcast, the boxes with commands waiting."""

    results: dict[str, Any] = field(default_factory=dict)
    presence: list[tuple[UUID, Any, bool]] = field(default_factory=list)
    events: list[Any] = field(default_factory=list)
    waiting: set[UUID] = field(default_factory=set)


def _clean(text: str) -> str:
    return text.replace("\x00", "") if "\x00" in text else text


def _resolve(future: asyncio.Future, result: Any) -> None:
    if not future.done():
        future.set_result(result)


def _fail(items: list[Any], exc: Exception) -> None:
    for item in items:
        if not item.future.done():
            item.future.set_exception(exc)


class _Batches:
    """Natural batching of one kind of call: a call waits at most for the batch in flight; every call
    that arrived meanwhile (up to ``max_batch``) goes into the next one. One batch in flight at a
    time, so under light load a call is served at once and under a storm batches grow by themselves."""

    def __init__(self, flush: Callable[[list[Any]], Awaitable[None]], max_batch: int, name: str) -> None:
        self.flush = flush
        self.max_batch = max_batch
        self.name = name
        self._queue: list[Any] = []
        self._task: asyncio.Task | None = None

    def submit(self, item: Any) -> None:
        self._queue.append(item)
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name=self.name)

    async def _run(self) -> None:
        while self._queue:
            batch, self._queue = self._queue[: self.max_batch], self._queue[self.max_batch :]
            try:
                await self.flush(batch)
            except Exception as exc:  # the gate must survive anything; its callers get an error
                logger.exception("%s batch of %d failed", self.name, len(batch))
                _fail(batch, SessionsUnavailable(str(exc)[:200]))

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        _fail(self._queue, SessionsUnavailable("the server is stopping"))
        self._queue = []


class SessionGate:
    """Connects, hellos and ends of this event loop's agent sessions (one gate per loop)."""

    def __init__(self, *, conninfo: dict[str, Any] | None = None, max_batch: int | None = None) -> None:
        otb = cast(dict[str, Any], settings.OTB)
        size = int(max_batch or otb.get("SESSION_MAX_BATCH", 500))
        self.connections = LiveConnections(role="session-gate", conninfo=conninfo)
        self._batches = {
            kind: _Batches(functools.partial(self._flush, kind, store, finish), size, f"session-{kind}")
            for kind, store, finish in (
                ("connects", self._store_connects, self._finish_connects),
                ("hellos", self._store_hellos, self._finish_hellos),
                ("closes", self._store_closes, self._finish_closes),
            )
        }
        self._background: set[asyncio.Task] = set()
        self.stats: collections.Counter[str] = collections.Counter()

    # -- the consumer side ---------------------------------------------------------------------
    async def connect(self, *, token: str | None, session_id: str) -> SessionGrant | None:
        """Authenticate an agent websocket and make ``session_id`` the box's current session.

        None for an unknown, revoked or malformed token. A grant with ``retry_after_s > 0`` (and no
        session claimed) while the box serves a penalty for sending too many invalid frames.
        Raises :class:`SessionsUnavailable` when the database cannot be reached.
        """
        if not token or len(token) > MAX_TOKEN_LENGTH or token_kind(token) != TokenKind.AGENT:
            return None
        return cast(SessionGrant | None, await self._submit("connects", _Connect, digest(token), session_id))

    async def hello(self, *, box_id: UUID, session_id: str, hello: dict[str, Any]) -> dict[str, Any] | None:
        """Mark the box online for this session and build its ``welcome`` frame (``hello`` is a
        validated protocol frame). None when another session has replaced this one meanwhile."""
        return cast(
            dict[str, Any] | None,
            await self._submit(
                "hellos",
                _Hello,
                box_id,
                session_id,
                _clean(hello["firmware_version"]),
                _clean(hello["agent_version"]),
                _clean(hello["boot_id"]),
                hello["uptime_s"],
                hello["dropped_samples"],
            ),
        )

    async def disconnect(self, *, box_id: UUID, session_id: str, code: int | None = None) -> bool:
        """End a session: the box goes offline only if this is still its current session (records
        ``session_closed`` and ``box_offline``). True when the box was marked offline by this call."""
        return bool(await self._submit("closes", _Close, box_id, session_id, code))

    async def close(self) -> None:
        for batches in self._batches.values():
            await batches.close()
        for task in list(self._background):
            task.cancel()
        await self.connections.close()

    async def _submit(self, kind: str, item_type: Any, *fields: Any) -> Any:
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        self._batches[kind].submit(item_type(*fields, future))
        return await future

    async def _flush(
        self,
        kind: str,
        store: Callable[[psycopg.AsyncCursor, list[Any]], Awaitable[Any]],
        finish: Callable[[list[Any], Any], None],
        batch: list[Any],
    ) -> None:
        """Run ``store`` for the batch in one transaction, then ``finish`` (resolve the futures).
        A lost connection fails the batch; a data error replays its items one by one, so one bad
        item cannot refuse the others."""
        try:
            conn = await self.connections.acquire()
        except (*DISCONNECTED, psycopg.Error) as exc:
            logger.warning("session gate: database unavailable: %s", exc)
            _fail(batch, SessionsUnavailable("database unavailable"))
            return
        try:
            async with conn.transaction(), conn.cursor() as cur:
                outcome = await store(cur, batch)
        except DISCONNECTED as exc:
            logger.warning("session gate: database connection lost: %s", exc)
            await self.connections.discard(conn)
            _fail(batch, SessionsUnavailable("database connection lost"))
            return
        except psycopg.Error as exc:
            self.connections.release(conn)
            if len(batch) == 1:
                logger.warning("session %s of box %s refused by the database: %s", kind, batch[0], exc)
                _fail(batch, SessionsUnavailable(f"{kind[:-1]} could not be stored"))
                return
            for item in batch:
                await self._flush(kind, store, finish, [item])
            return
        self.connections.release(conn)
        self.stats[f"{kind}_batches"] += 1
        self.stats[kind] += len(batch)
        finish(batch, outcome)

    # -- connects --------------------------------------------------------------------------------
    async def _store_connects(
        self, cur: psycopg.AsyncCursor, batch: list[_Connect]
    ) -> dict[int, SessionGrant]:
        await cur.execute(CONNECT_LOOKUP_SQL, ([item.token_hash for item in batch],))
        found = {int(row[0]) - 1: row[1:] for row in await cur.fetchall()}
        now = datetime.now(UTC)
        grants: dict[int, SessionGrant] = {}
        claims: dict[UUID, str] = {}  # box -> session; the last connect of a box wins
        for index, item in enumerate(batch):
            if index not in found:
                continue
            box_id, organization_id, serial, penalty_until = found[index]
            if penalty_until is not None and penalty_until > now:
                wait = max(1.0, round((penalty_until - now).total_seconds(), 1))
                grants[index] = SessionGrant(box_id=box_id, retry_after_s=wait)
                continue
            grants[index] = SessionGrant(box_id=box_id, organization_id=organization_id, serial=serial)
            claims[box_id] = item.session_id
        if claims:
            boxes = sorted(claims)  # row locks in box order, like every other live batch
            await cur.execute(CLAIM_SESSIONS_SQL, (boxes, [claims[box] for box in boxes]))
        return grants

    @staticmethod
    def _finish_connects(batch: list[_Connect], grants: dict[int, SessionGrant]) -> None:
        for index, item in enumerate(batch):
            _resolve(item.future, grants.get(index))

    # -- hellos ----------------------------------------------------------------------------------
    async def _store_hellos(self, cur: psycopg.AsyncCursor, batch: list[_Hello]) -> _Outcome:
        otb = cast(dict[str, Any], settings.OTB)
        now = datetime.now(UTC)
        outcome = _Outcome()
        await cur.execute(HELLO_LOCK_SQL, (sorted({item.box_id for item in batch}),))
        rows = {row[0]: row for row in await cur.fetchall()}
        current = sorted(
            (item for item in batch if item.box_id in rows and rows[item.box_id][1] == item.session_id),
            key=lambda item: item.box_id,
        )
        if not current:
            return outcome
        await cur.execute(
            HELLO_STATUS_SQL,
            (
                now,
                now,
                [item.box_id for item in current],
                [item.boot_id for item in current],
                [item.uptime_s for item in current],
                [item.agent_version for item in current],
                [item.firmware for item in current],
                [item.dropped for item in current],
            ),
        )
        changed: list[_Hello] = []
        audits: list[tuple[Any, ...]] = []
        events: list[tuple[Any, ...]] = []
        for item in current:
            (_, _, was_online, status_firmware, last_seq, serial, organization_id, config_hash,
             box_firmware, box_agent) = rows[item.box_id]  # fmt: skip
            if box_firmware != item.firmware or box_agent != item.agent_version:
                changed.append(item)
                audits.append(
                    audit_sql_row(
                        at=now,
                        actor=Actor(label=f"box:{serial}"),
                        action="box.versions_reported",
                        organization_id=organization_id,
                        box_id=item.box_id,
                        target_type="box",
                        target_id=item.box_id,
                        before={"firmware_version": box_firmware, "agent_version": box_agent},
                        after={"firmware_version": item.firmware, "agent_version": item.agent_version},
                    )
                )
            base = (item.box_id, organization_id, now)
            events.append((*base, "session_opened", {"session_id": item.session_id, "boot_id": item.boot_id}))
            if not was_online:
                events.append((*base, "box_online", {"session_id": item.session_id}))
                outcome.presence.append((item.box_id, organization_id, True))
            previous_firmware = status_firmware or box_firmware
            if previous_firmware and previous_firmware != item.firmware:
                events.append((*base, "firmware_changed", {"from": previous_firmware, "to": item.firmware}))
            outcome.results[item.session_id] = {
                "type": "welcome",
                "session_id": item.session_id,
                "telemetry_interval_s": otb["TELEMETRY_INTERVAL_S"],
                "heartbeat_interval_s": otb["HEARTBEAT_INTERVAL_S"],
                "desired_config_hash": config_hash or None,
                "last_acked_seq": last_seq,
                "pending_commands": [],
            }
        if changed:
            await cur.execute(
                HELLO_VERSIONS_SQL,
                (
                    now,
                    [item.box_id for item in changed],
                    [item.firmware for item in changed],
                    [item.agent_version for item in changed],
                ),
            )
            await cur.executemany(AUDIT_INSERT_SQL, audits)
        await self._insert_events(cur, events, outcome)
        await cur.execute(
            WAITING_COMMANDS_SQL,
            ([item.box_id for item in current], [str(state) for state in DELIVERABLE_STATES], now),
        )
        outcome.waiting = {row[0] for row in await cur.fetchall()}
        return outcome

    def _finish_hellos(self, batch: list[_Hello], outcome: _Outcome) -> None:
        for item in batch:
            welcome = outcome.results.get(item.session_id)
            if welcome is not None and item.box_id in outcome.waiting:
                self._spawn(self._deliver_with_commands(item, welcome))
            else:
                _resolve(item.future, welcome)
        self._announce(outcome)

    # -- session ends ----------------------------------------------------------------------------
    async def _store_closes(self, cur: psycopg.AsyncCursor, batch: list[_Close]) -> _Outcome:
        now = datetime.now(UTC)
        outcome = _Outcome()
        await cur.execute(CLOSE_LOCK_SQL, (sorted({item.box_id for item in batch}),))
        rows = {row[0]: row for row in await cur.fetchall()}
        current = [item for item in batch if item.box_id in rows and rows[item.box_id][1] == item.session_id]
        if not current:
            return outcome
        await cur.execute(CLOSE_STATUS_SQL, (now, now, now, sorted(item.box_id for item in current)))
        events: list[tuple[Any, ...]] = []
        for item in current:
            _, _, was_online, organization_id = rows[item.box_id]
            base = (item.box_id, organization_id, now)
            events.append((*base, "session_closed", {"session_id": item.session_id, "code": item.code}))
            if was_online:
                events.append((*base, "box_offline", {"reason": "disconnected", "code": item.code}))
                outcome.presence.append((item.box_id, organization_id, False))
            outcome.results[item.session_id] = was_online
        await self._insert_events(cur, events, outcome)
        return outcome

    def _finish_closes(self, batch: list[_Close], outcome: _Outcome) -> None:
        for item in batch:
            _resolve(item.future, outcome.results.get(item.session_id, False))
        self._announce(outcome)

    # -- shared ----------------------------------------------------------------------------------
    @staticmethod
    async def _insert_events(
        cur: psycopg.AsyncCursor, events: list[tuple[Any, ...]], outcome: _Outcome
    ) -> None:
        if events:
            outcome.events, columns = event_rows(events)
            await cur.execute(EVENTS_INSERT_SQL, columns)

    async def _deliver_with_commands(self, item: _Hello, welcome: dict[str, Any]) -> None:
        try:
            commands = await database_sync_to_async(commands_pending_for_box)(box_id=item.box_id)
        except Exception:  # the session is up; the commands stay pending for the next doorbell/hello
            logger.exception("fetching pending commands of box %s failed", item.box_id)
            commands = []
        welcome["pending_commands"] = list(commands)[:MAX_PENDING_COMMANDS]
        _resolve(item.future, welcome)

    def _announce(self, outcome: _Outcome) -> None:
        """Presence changes and events go to the people watching once committed, from the loop."""
        if outcome.presence or outcome.events:
            self._spawn(self._broadcast(outcome.presence, outcome.events))

    @staticmethod
    async def _broadcast(presence: list[tuple[UUID, Any, bool]], events: list[Any]) -> None:
        for box_id, organization_id, online in presence:
            message = {"kind": "presence", "box_id": str(box_id), "online": online}
            await abroadcast_to_people(box_id, organization_id, message)
        if events:
            await aevents_broadcast(events)

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)


_gates: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, SessionGate] = weakref.WeakKeyDictionary()


def get_session_gate() -> SessionGate:
    """The gate of the running event loop (one per process in production, one per test loop)."""
    loop = asyncio.get_running_loop()
    gate = _gates.get(loop)
    if gate is None:
        gate = _gates[loop] = SessionGate()
    return gate


async def close_session_gate() -> None:
    gate = _gates.pop(asyncio.get_running_loop(), None)
    if gate is not None:
        await gate.close()
