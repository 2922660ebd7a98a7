"""The session gate: the connect, the ``hello`` and the end of every agent session of this process,
batched.

A server restart brings every box of the process back within seconds. Done one session at a time
(a thread hop, the ORM, a transaction of six statements and two broadcasts each), that storm cost
about 10 ms of server CPU per session. Here each kind of call waits only for the batch in flight, and
all that arrived meanwhile are served by the next one, on the loop's own psycopg connection:

- ``connect``: ONE lookup of all the tokens (live credential, box not decommissioned, reconnect
  penalty), then ONE upsert making each session its box's current one;
- ``hello``: ONE transaction: lock the status rows (box order, like the telemetry writer: no
  deadlocks), mark the boxes online with what they report, update the versions of the boxes that
  report new ones (audited), insert the timeline events (``session_opened``, ``box_online``,
  ``firmware_changed``), and find which boxes have commands waiting;
- ``disconnect``: ONE transaction marks offline the boxes whose current session ended (the end of a
  replaced session changes nothing).

The batching itself (one batch in flight per kind of call, futures resolved after the commit, a lost
connection failing the batch, a data error replaying it one call at a time) is the live paths' one
engine, ``fleet.core.batching``; this module is what each batch stores. After the commit each
``welcome`` is returned; a box with commands waiting fetches them through ``commands_pending_for_box``
(rare; one implementation of delivery), and presence and events are broadcast to people from the loop.
"""

from __future__ import annotations

import collections
import logging
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
from fleet.core.batching import Batcher, Committed, PerLoop
from fleet.core.column_specs import model_spec
from fleet.core.credentials import agent_credential_join, live_agent_credential_sql
from fleet.core.doorbells import abroadcast_to_people
from fleet.core.events import EVENTS_INSERT_SQL, aevents_broadcast, event_rows
from fleet.core.live_connections import LiveConnections
from fleet.core.models import Box
from fleet.core.tokens import TokenKind, digest, token_kind
from fleet.telemetry.models import BoxStatus

logger = logging.getLogger(__name__)

MAX_TOKEN_LENGTH = 200
MAX_PENDING_COMMANDS = 100

CONNECT_LOOKUP_SQL = f"""
SELECT r.i, c.box_id, b.organization_id, b.serial, s.penalty_until
FROM unnest(%s::text[]) WITH ORDINALITY AS r(token_hash, i)
JOIN ({agent_credential_join()}) ON c.token_hash = r.token_hash
LEFT JOIN telemetry_boxstatus s ON s.box_id = c.box_id
WHERE {live_agent_credential_sql()}
"""  # noqa: S608 (identifiers from the models)
# Makes each session its box's current one; every other column of a new row has its database default.
SESSION_CLAIM = model_spec(BoxStatus, "box", "session_id", "connected_at")
CLAIM_SESSIONS_SQL = f"""
INSERT INTO {SESSION_CLAIM.table} ({SESSION_CLAIM.column_list})
SELECT v.box_id, v.session_id, now() FROM unnest(%s::uuid[], %s::text[]) AS v(box_id, session_id)
ON CONFLICT (box_id) DO UPDATE SET
    session_id = EXCLUDED.session_id, connected_at = EXCLUDED.connected_at, updated_at = now()
"""  # noqa: S608
HELLO_LOCK_SQL = """
SELECT s.box_id, s.session_id, s.online, s.firmware_version, s.last_seq,
    b.serial, b.organization_id, b.config_hash, b.firmware_version, b.agent_version
FROM telemetry_boxstatus s JOIN fleet_box b ON b.id = s.box_id
WHERE s.box_id = ANY(%s) ORDER BY s.box_id FOR UPDATE OF s
"""
# What a hello reports, as column arrays in this order (one row per box).
HELLO_STATUS = model_spec(
    BoxStatus,
    "box",
    "boot_id",
    "uptime_s",
    "agent_version",
    "firmware_version",
    "dropped_samples",
    inserts=False,
)
HELLO_STATUS_SQL = f"""
UPDATE telemetry_boxstatus AS s SET online = true, offline_since = NULL, last_seen_at = %s,
    boot_id = v.boot_id, uptime_s = v.uptime_s, agent_version = v.agent_version,
    firmware_version = v.firmware_version, dropped_samples = v.dropped_samples, updated_at = %s
FROM {HELLO_STATUS.unnest_sql()} AS v({HELLO_STATUS.column_list})
WHERE s.box_id = v.box_id
"""  # noqa: S608
HELLO_VERSIONS = model_spec(Box, "id", "firmware_version", "agent_version", inserts=False)
HELLO_VERSIONS_SQL = f"""
UPDATE fleet_box AS b SET firmware_version = v.firmware_version, agent_version = v.agent_version,
    updated_at = %s
FROM {HELLO_VERSIONS.unnest_sql()} AS v({HELLO_VERSIONS.column_list})
WHERE b.id = v.id
"""  # noqa: S608
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


@dataclass(slots=True)
class _Hello:
    box_id: UUID
    session_id: str
    firmware: str
    agent_version: str
    boot_id: str
    uptime_s: int
    dropped: int


@dataclass(slots=True)
class _Close:
    box_id: UUID
    session_id: str
    code: int | None


@dataclass(slots=True)
class _Announcements:
    """What a committed hello or close batch tells the people watching: presence changes, events."""

    presence: list[tuple[UUID, Any, bool]] = field(default_factory=list)
    events: list[Any] = field(default_factory=list)


def _clean(text: str) -> str:
    return text.replace("\x00", "") if "\x00" in text else text


class SessionGate:
    """Connects, hellos and ends of this event loop's agent sessions (one gate per loop)."""

    def __init__(self, *, conninfo: dict[str, Any] | None = None, max_batch: int | None = None) -> None:
        otb = cast(dict[str, Any], settings.OTB)
        size = int(max_batch or otb.get("SESSION_MAX_BATCH", 500))
        self.connections = LiveConnections(role="session-gate", conninfo=conninfo)
        self._connects: Batcher[_Connect] = self._batcher("connects", self._store_connects, size)
        self._hellos: Batcher[_Hello] = self._batcher("hellos", self._store_hellos, size)
        self._closes: Batcher[_Close] = self._batcher("closes", self._store_closes, size)

    def _batcher(self, kind: str, store: Any, size: int) -> Any:
        """Natural batching of one kind of call: a call waits at most for the batch in flight; every
        call that arrived meanwhile (up to ``size``) goes into the next one."""

        def rejected(exc: psycopg.Error) -> Exception:
            return SessionsUnavailable(f"{kind[:-1]} could not be stored")

        return Batcher(
            name=f"session-{kind}",
            connections=self.connections,
            store=store,
            unavailable=SessionsUnavailable,
            rejected=rejected,
            max_batch=size,
        )

    @property
    def stats(self) -> collections.Counter[str]:
        """Committed batches and calls per kind (``connects_batches``, ``connects``, ...)."""
        stats: collections.Counter[str] = collections.Counter()
        for kind, batcher in (
            ("connects", self._connects),
            ("hellos", self._hellos),
            ("closes", self._closes),
        ):
            stats[f"{kind}_batches"] = batcher.stats["batches"]
            stats[kind] = batcher.stats["items"]
        return stats

    # -- the consumer side ---------------------------------------------------------------------
    async def connect(self, *, token: str | None, session_id: str) -> SessionGrant | None:
        """Authenticate an agent websocket and make ``session_id`` the box's current session.

        None for an unknown, revoked or malformed token. A grant with ``retry_after_s > 0`` (and no
        session claimed) while the box serves a penalty for sending too many invalid frames.
        Raises :class:`SessionsUnavailable` when the database cannot be reached.
        """
        if not token or len(token) > MAX_TOKEN_LENGTH or token_kind(token) != TokenKind.AGENT:
            return None
        return cast(SessionGrant | None, await self._connects.submit(_Connect(digest(token), session_id)))

    async def hello(self, *, box_id: UUID, session_id: str, hello: dict[str, Any]) -> dict[str, Any] | None:
        """Mark the box online for this session and build its ``welcome`` frame (``hello`` is a
        validated protocol frame). None when another session has replaced this one meanwhile."""
        item = _Hello(
            box_id,
            session_id,
            _clean(hello["firmware_version"]),
            _clean(hello["agent_version"]),
            _clean(hello["boot_id"]),
            hello["uptime_s"],
            hello["dropped_samples"],
        )
        outcome = await self._hellos.submit(item)
        if outcome is None:
            return None
        welcome, commands_waiting = cast(tuple[dict[str, Any], bool], outcome)
        if commands_waiting:
            welcome["pending_commands"] = await self._pending_commands(box_id)
        return welcome

    async def disconnect(self, *, box_id: UUID, session_id: str, code: int | None = None) -> bool:
        """End a session: the box goes offline only if this is still its current session (records
        ``session_closed`` and ``box_offline``). True when the box was marked offline by this call."""
        return bool(await self._closes.submit(_Close(box_id, session_id, code)))

    async def close(self) -> None:
        for batcher in (self._connects, self._hellos, self._closes):
            await batcher.close()
        await self.connections.close()

    # -- connects --------------------------------------------------------------------------------
    async def _store_connects(
        self, cur: psycopg.AsyncCursor[Any], batch: list[_Connect], _side_work: None
    ) -> Committed:
        await cur.execute(CONNECT_LOOKUP_SQL, ([item.token_hash for item in batch],))
        found = {int(row[0]) - 1: row[1:] for row in await cur.fetchall()}
        now = datetime.now(UTC)
        grants: list[SessionGrant | None] = [None] * len(batch)
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
        return Committed(grants)

    # -- hellos ----------------------------------------------------------------------------------
    async def _store_hellos(
        self, cur: psycopg.AsyncCursor[Any], batch: list[_Hello], _side_work: None
    ) -> Committed:
        """Each hello's (welcome, commands waiting), or None for a replaced session."""
        otb = cast(dict[str, Any], settings.OTB)
        now = datetime.now(UTC)
        results: list[tuple[dict[str, Any], bool] | None] = [None] * len(batch)
        await cur.execute(HELLO_LOCK_SQL, (sorted({item.box_id for item in batch}),))
        rows = {row[0]: row for row in await cur.fetchall()}
        current = sorted(
            (
                index
                for index, item in enumerate(batch)
                if item.box_id in rows and rows[item.box_id][1] == item.session_id
            ),
            key=lambda index: batch[index].box_id,
        )
        if not current:
            return Committed(results)
        hellos = [batch[index] for index in current]
        await cur.execute(
            HELLO_STATUS_SQL,
            (
                now,
                now,
                [item.box_id for item in hellos],
                [item.boot_id for item in hellos],
                [item.uptime_s for item in hellos],
                [item.agent_version for item in hellos],
                [item.firmware for item in hellos],
                [item.dropped for item in hellos],
            ),
        )
        changed: list[_Hello] = []
        audits: list[tuple[Any, ...]] = []
        events: list[tuple[Any, ...]] = []
        announcements = _Announcements()
        welcomes: dict[int, dict[str, Any]] = {}
        for index, item in zip(current, hellos, strict=True):
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
                announcements.presence.append((item.box_id, organization_id, True))
            previous_firmware = status_firmware or box_firmware
            if previous_firmware and previous_firmware != item.firmware:
                events.append((*base, "firmware_changed", {"from": previous_firmware, "to": item.firmware}))
            welcomes[index] = {
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
        await self._insert_events(cur, events, announcements)
        await cur.execute(
            WAITING_COMMANDS_SQL,
            ([item.box_id for item in hellos], [str(state) for state in DELIVERABLE_STATES], now),
        )
        waiting = {row[0] for row in await cur.fetchall()}
        for index, welcome in welcomes.items():
            results[index] = (welcome, batch[index].box_id in waiting)
        return Committed(results, self._announcer(announcements))

    async def _pending_commands(self, box_id: UUID) -> list[dict[str, Any]]:
        try:
            commands = await database_sync_to_async(commands_pending_for_box)(box_id=box_id)
        except Exception:  # the session is up; the commands stay pending for the next doorbell/hello
            logger.exception("fetching pending commands of box %s failed", box_id)
            commands = []
        return list(commands)[:MAX_PENDING_COMMANDS]

    # -- session ends ----------------------------------------------------------------------------
    async def _store_closes(
        self, cur: psycopg.AsyncCursor[Any], batch: list[_Close], _side_work: None
    ) -> Committed:
        """Each close's answer: was the box marked offline by it."""
        now = datetime.now(UTC)
        results = [False] * len(batch)
        await cur.execute(CLOSE_LOCK_SQL, (sorted({item.box_id for item in batch}),))
        rows = {row[0]: row for row in await cur.fetchall()}
        current = [
            index
            for index, item in enumerate(batch)
            if item.box_id in rows and rows[item.box_id][1] == item.session_id
        ]
        if not current:
            return Committed(results)
        await cur.execute(CLOSE_STATUS_SQL, (now, now, now, sorted(batch[index].box_id for index in current)))
        events: list[tuple[Any, ...]] = []
        announcements = _Announcements()
        for index in current:
            item = batch[index]
            _, _, was_online, organization_id = rows[item.box_id]
            base = (item.box_id, organization_id, now)
            events.append((*base, "session_closed", {"session_id": item.session_id, "code": item.code}))
            if was_online:
                events.append((*base, "box_offline", {"reason": "disconnected", "code": item.code}))
                announcements.presence.append((item.box_id, organization_id, False))
            results[index] = was_online
        await self._insert_events(cur, events, announcements)
        return Committed(results, self._announcer(announcements))

    # -- shared ----------------------------------------------------------------------------------
    @staticmethod
    async def _insert_events(
        cur: psycopg.AsyncCursor[Any], events: list[tuple[Any, ...]], announcements: _Announcements
    ) -> None:
        if events:
            announcements.events, columns = event_rows(events)
            await cur.execute(EVENTS_INSERT_SQL, columns)

    @staticmethod
    def _announcer(announcements: _Announcements) -> Any:
        """Presence changes and events go to the people watching once committed, from the loop."""
        if not announcements.presence and not announcements.events:
            return None

        async def announce() -> None:
            for box_id, organization_id, online in announcements.presence:
                message = {"kind": "presence", "box_id": str(box_id), "online": online}
                await abroadcast_to_people(box_id, organization_id, message)
            if announcements.events:
                await aevents_broadcast(announcements.events)

        return announce


_gates: PerLoop[SessionGate] = PerLoop(SessionGate)


def get_session_gate() -> SessionGate:
    """The gate of the running event loop (one per process in production, one per test loop)."""
    return _gates.get()


async def close_session_gate() -> None:
    await _gates.close()
