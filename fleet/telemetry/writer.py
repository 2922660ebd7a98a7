"""The per-process telemetry batching writer: the hot path between agent sessions and PostgreSQL.

Consumers ``await writer.submit(...)``; the writer gathers messages for up to ``flush_interval_ms``
(or ``max_batch`` messages) and stores the whole batch in ONE transaction on ONE dedicated psycopg
``AsyncConnection`` (no Django ORM here, no thread hop):

1. lock the boxes' ``telemetry_boxstatus`` rows in primary-key order (no deadlocks between
   processes) and read the ``last_seq`` watermark;
2. drop messages whose ``seq <= last_seq`` (duplicates: acknowledged again, never stored twice);
3. ``COPY`` the samples into the partitioned ``telemetry_box_sample`` / ``telemetry_wan_sample``;
4. move the watermark and the live status, upsert ``telemetry_wanstatus`` and detect WAN up/down
   transitions against the previous rows, all in the same transaction;
5. commit, THEN resolve the futures: an ``ack`` therefore always means "committed".

After the commit, transition events are recorded (``fleet.monitoring.services.events_record_batch``)
and a compact, per-box throttled update is broadcast to people. If the database is unreachable the
futures fail with :class:`StorageUnavailable` and nothing is acknowledged; the agent resends.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import math
import time
import weakref
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import psycopg
from django.conf import settings
from django.db import connections

logger = logging.getLogger(__name__)

# A WAN is "degraded" while up but losing this much or this slow (monitoring alerts build on it).
DEGRADED_LOSS_PCT = 5.0
DEGRADED_RTT_MS = 500.0
# Sample timestamps outside [MIN_TS, now + MAX_FUTURE_S] come from a broken clock: they are stored
# at the receive time rather than refused, so an acknowledged sample is never lost.
MIN_TS = 946684800.0  # 2000-01-01
MAX_FUTURE_S = 86400.0


class StorageUnavailable(Exception):
    """The batch could not be committed (database down or overloaded); nothing was stored."""

    def __init__(self, message: str, retry_after_s: float = 5.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class TelemetryRejected(Exception):
    """This message can never be stored (e.g. its box no longer exists); do not retry it."""


@dataclass(slots=True)
class _Message:
    box_id: UUID
    organization_id: Any
    session_id: str
    seq: int
    samples: list[dict[str, Any]]
    dropped: int | None
    future: asyncio.Future = field(repr=False)


@dataclass(slots=True)
class _BoxUpdate:
    last_seq: int
    latest: dict[str, Any]
    latest_ts: datetime
    dropped: int | None
    revive: bool


def is_degraded(wan: dict[str, Any]) -> bool:
    if not wan["up"]:
        return False
    loss = wan.get("loss_pct")
    rtt = wan.get("rtt_ms")
    return (loss is not None and loss >= DEGRADED_LOSS_PCT) or (rtt is not None and rtt >= DEGRADED_RTT_MS)


def sample_time(ts: float, received: float) -> datetime:
    if not (MIN_TS <= ts <= received + MAX_FUTURE_S) or not math.isfinite(ts):
        ts = received
    return datetime.fromtimestamp(ts, UTC)


def _clean(text: str) -> str:
    return text.replace("\x00", "") if "\x00" in text else text


def _ip_or_none(value: str | None) -> str | None:
    if not value:
        return None
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        return None


def conninfo_from_settings(alias: str = "default") -> dict[str, Any]:
    """psycopg connection keywords for the Django database (also the pytest-django test database)."""
    params = connections[alias].get_connection_params()
    keep = {"dbname", "user", "password", "host", "port", "sslmode", "sslrootcert", "sslcert", "sslkey"}
    kwargs = {key: value for key, value in params.items() if key in keep and value not in (None, "")}
    kwargs["application_name"] = f"{params.get('application_name', 'otb-fleet')}-telemetry-writer"
    return kwargs


BOX_SAMPLE_COLUMNS = (
    "box_id, seq, idx, ts, cpu_pct, mem_pct, load1, uptime_s, tunnel_up, conntrack, rx_bps, tx_bps, "
    "wans_up, wans_total"
)
BOX_SAMPLE_TYPES = [
    "uuid",
    "int8",
    "int2",
    "timestamptz",
    "float4",
    "float4",
    "float4",
    "int8",
    "bool",
    "int8",
    "int8",
    "int8",
    "int2",
    "int2",
]
WAN_SAMPLE_COLUMNS = "box_id, seq, ts, iface, kind, up, rtt_ms, jitter_ms, loss_pct, rx_bps, tx_bps, subflows"
WAN_SAMPLE_TYPES = [
    "uuid",
    "int8",
    "timestamptz",
    "varchar",
    "varchar",
    "bool",
    "float4",
    "float4",
    "float4",
    "int8",
    "int8",
    "int4",
]

LOCK_SQL = (
    "SELECT box_id, last_seq, online, session_id FROM telemetry_boxstatus "
    "WHERE box_id = ANY(%s) ORDER BY box_id FOR UPDATE"
)
CREATE_STATUS_SQL = """
INSERT INTO telemetry_boxstatus (box_id, online, session_id, last_seq, boot_id, agent_version,
    firmware_version, wans_up, wans_total, dropped_samples, updated_at)
SELECT id, false, '', 0, '', '', '', 0, 0, 0, now() FROM fleet_box WHERE id = ANY(%s)
ON CONFLICT (box_id) DO NOTHING
"""
UPDATE_STATUS_SQL = """
UPDATE telemetry_boxstatus AS s SET
    last_seq = v.last_seq, last_seen_at = now(), cpu_pct = v.cpu_pct, mem_pct = v.mem_pct,
    load1 = v.load1, uptime_s = v.uptime_s, tunnel_up = v.tunnel_up, rx_bps = v.rx_bps,
    tx_bps = v.tx_bps, wans_up = v.wans_up, wans_total = v.wans_total,
    dropped_samples = COALESCE(v.dropped, s.dropped_samples),
    online = s.online OR v.revive, offline_since = CASE WHEN v.revive THEN NULL ELSE s.offline_since END,
    updated_at = now()
FROM unnest(%s::uuid[], %s::int8[], %s::float8[], %s::float8[], %s::float8[], %s::int8[], %s::bool[],
            %s::int8[], %s::int8[], %s::int4[], %s::int4[], %s::int8[], %s::bool[])
    AS v(box_id, last_seq, cpu_pct, mem_pct, load1, uptime_s, tunnel_up, rx_bps, tx_bps, wans_up,
         wans_total, dropped, revive)
WHERE s.box_id = v.box_id
"""
TOUCH_SQL = "UPDATE telemetry_boxstatus SET last_seen_at = now() WHERE box_id = ANY(%s)"
WAN_PREVIOUS_SQL = (
    "SELECT box_id, iface, up, up_changed_at, degraded_since FROM telemetry_wanstatus WHERE box_id = ANY(%s)"
)
UPSERT_WAN_SQL = """
INSERT INTO telemetry_wanstatus (box_id, iface, label, kind, up, rtt_ms, jitter_ms, loss_pct, rx_bps,
    tx_bps, public_ip, subflows, up_changed_at, degraded_since, updated_at)
SELECT * FROM unnest(%s::uuid[], %s::varchar[], %s::varchar[], %s::varchar[], %s::bool[], %s::float8[],
    %s::float8[], %s::float8[], %s::int8[], %s::int8[], %s::inet[], %s::int4[], %s::timestamptz[],
    %s::timestamptz[], %s::timestamptz[])
ON CONFLICT (box_id, iface) DO UPDATE SET
    label = EXCLUDED.label, kind = EXCLUDED.kind, up = EXCLUDED.up, rtt_ms = EXCLUDED.rtt_ms,
    jitter_ms = EXCLUDED.jitter_ms, loss_pct = EXCLUDED.loss_pct, rx_bps = EXCLUDED.rx_bps,
    tx_bps = EXCLUDED.tx_bps, public_ip = EXCLUDED.public_ip, subflows = EXCLUDED.subflows,
    up_changed_at = EXCLUDED.up_changed_at, degraded_since = EXCLUDED.degraded_since,
    updated_at = EXCLUDED.updated_at
"""

_DISCONNECTED = (psycopg.OperationalError, psycopg.InterfaceError, OSError)


class TelemetryWriter:
    """Batches telemetry of every session of this process into few large transactions."""

    def __init__(
        self,
        *,
        conninfo: dict[str, Any] | None = None,
        flush_interval_ms: float | None = None,
        max_batch: int | None = None,
        max_pending: int | None = None,
    ) -> None:
        otb = settings.OTB
        self.conninfo = conninfo
        self.flush_interval = (flush_interval_ms or otb.get("TELEMETRY_FLUSH_INTERVAL_MS", 50)) / 1000
        self.max_batch = max_batch or otb.get("TELEMETRY_MAX_BATCH", 500)
        self.max_pending = max_pending or otb.get("TELEMETRY_MAX_PENDING", 20000)
        self.broadcast_interval = float(otb.get("LIVE_BROADCAST_INTERVAL_S", 5))
        self._queue: list[_Message] = []
        self._touches: set[UUID] = set()
        self._wake = asyncio.Event()
        self._full = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._conn: psycopg.AsyncConnection | None = None
        self._background: set[asyncio.Task] = set()
        self._last_broadcast: dict[UUID, float] = {}
        self._partitions_checked = 0.0
        self.stats = {"batches": 0, "messages": 0, "duplicates": 0, "samples": 0}

    # -- the consumer side -------------------------------------------------------------------
    async def submit(
        self,
        *,
        box_id: UUID,
        organization_id: Any,
        session_id: str,
        seq: int,
        samples: list[dict[str, Any]],
        dropped: int | None = None,
    ) -> bool:
        """Store one telemetry message; True once committed, False if it was a duplicate.

        Raises :class:`StorageUnavailable` (retry later, do not ack) or :class:`TelemetryRejected`.
        """
        if len(self._queue) >= self.max_pending:
            raise StorageUnavailable("telemetry writer overloaded", retry_after_s=2.0)
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        self._queue.append(_Message(box_id, organization_id, session_id, seq, samples, dropped, future))
        self._ensure_running()
        self._wake.set()
        if len(self._queue) >= self.max_batch:
            self._full.set()
        return await future

    def touch(self, box_id: UUID) -> None:
        """Note that the box was seen (a heartbeat); flushed with the next batch."""
        self._touches.add(box_id)
        self._ensure_running()
        self._wake.set()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None
        for task in list(self._background):
            task.cancel()
        if self._conn is not None:
            try:
                await self._conn.close()
            except Exception:  # closing a dead connection
                logger.debug("writer connection close failed", exc_info=True)
            self._conn = None

    # -- the loop ------------------------------------------------------------------------------
    def _ensure_running(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="telemetry-writer")

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            if len(self._queue) < self.max_batch:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._full.wait(), self.flush_interval)
            self._wake.clear()
            self._full.clear()
            batch, self._queue = self._queue[: self.max_batch], self._queue[self.max_batch :]
            touches, self._touches = self._touches, set()
            if self._queue:
                self._wake.set()
                if len(self._queue) >= self.max_batch:
                    self._full.set()
            try:
                await self._flush(batch, touches)
            except Exception:  # the writer loop must survive anything
                logger.exception("telemetry flush crashed")
                for message in batch:
                    if not message.future.done():
                        message.future.set_exception(StorageUnavailable("telemetry flush failed"))

    async def _connection(self) -> psycopg.AsyncConnection:
        if self._conn is not None and not self._conn.closed:
            return self._conn
        conninfo = self.conninfo or conninfo_from_settings()
        self._conn = await psycopg.AsyncConnection.connect(
            **conninfo, connect_timeout=3, options="-c statement_timeout=30000 -c lock_timeout=10000"
        )
        await self._ensure_partitions(self._conn)
        return self._conn

    async def _ensure_partitions(self, conn: psycopg.AsyncConnection) -> None:
        now = time.monotonic()
        if now - self._partitions_checked < 3600:
            return
        self._partitions_checked = now
        try:
            async with conn.transaction():
                await conn.execute("SELECT telemetry_ensure_partitions(3)")
        except psycopg.Error:
            logger.warning("telemetry partitions could not be ensured at writer start", exc_info=True)

    async def _flush(self, batch: list[_Message], touches: set[UUID]) -> None:
        if not batch and not touches:
            return
        try:
            conn = await self._connection()
            outcome = await self._store(conn, batch, touches)
        except _DISCONNECTED as exc:
            logger.warning("telemetry storage unavailable: %s", exc)
            await self._drop_connection()
            self._fail(batch, StorageUnavailable("telemetry storage unavailable"))
            return
        except psycopg.Error as exc:
            # A data error poisons the whole transaction: store messages one by one so that only
            # the bad one is refused and every other session keeps flowing.
            if len(batch) <= 1:
                logger.warning("telemetry message rejected: %s", exc)
                self._fail(batch, TelemetryRejected(str(exc).splitlines()[0][:200]))
                return
            for message in batch:
                await self._flush([message], set())
            if touches:
                await self._flush([], touches)
            return
        results, transitions, updates = outcome
        for message, stored in zip(batch, results, strict=True):
            if message.future.done():
                continue
            if isinstance(stored, Exception):
                message.future.set_exception(stored)
            else:
                message.future.set_result(stored)
        self._after_commit(batch, transitions, updates)

    async def _drop_connection(self) -> None:
        if self._conn is not None:
            try:
                await self._conn.close()
            except Exception:  # already broken
                logger.debug("closing broken writer connection failed", exc_info=True)
        self._conn = None

    @staticmethod
    def _fail(batch: list[_Message], exc: Exception) -> None:
        for message in batch:
            if not message.future.done():
                message.future.set_exception(exc)

    async def _store(
        self, conn: psycopg.AsyncConnection, batch: list[_Message], touches: set[UUID]
    ) -> tuple[list[bool | Exception], list[dict[str, Any]], dict[UUID, _BoxUpdate]]:
        received = time.time()
        now_dt = datetime.fromtimestamp(received, UTC)
        box_ids = sorted({message.box_id for message in batch})
        results: list[bool | Exception] = [False] * len(batch)
        transitions: list[dict[str, Any]] = []
        updates: dict[UUID, _BoxUpdate] = {}
        async with conn.transaction(), conn.cursor() as cur:
            if touches:
                await cur.execute(TOUCH_SQL, (list(touches),))
            if not box_ids:
                return results, transitions, updates
            await cur.execute(LOCK_SQL, (box_ids,))
            locked = {row[0]: row for row in await cur.fetchall()}
            missing = [box_id for box_id in box_ids if box_id not in locked]
            if missing:
                await cur.execute(CREATE_STATUS_SQL, (missing,))
                await cur.execute(LOCK_SQL, (box_ids,))
                locked = {row[0]: row for row in await cur.fetchall()}

            order = sorted(range(len(batch)), key=lambda i: (batch[i].box_id, batch[i].seq))
            watermark = {box_id: row[1] for box_id, row in locked.items()}
            box_rows: list[tuple] = []
            wan_rows: list[tuple] = []
            accepted: list[tuple[_Message, list[tuple[datetime, dict[str, Any]]]]] = []
            for i in order:
                message = batch[i]
                box_id = message.box_id
                if box_id not in locked:
                    results[i] = TelemetryRejected("unknown box")
                    continue
                if message.seq <= watermark[box_id]:
                    results[i] = False
                    continue
                watermark[box_id] = message.seq
                results[i] = True
                timed = []
                for idx, sample in enumerate(message.samples):
                    ts = sample_time(sample["ts"], received)
                    wans = sample["wans"]
                    wans_up = sum(1 for wan in wans if wan["up"])
                    box_rows.append(
                        (
                            box_id,
                            message.seq,
                            idx,
                            ts,
                            sample["cpu_pct"],
                            sample["mem_pct"],
                            sample["load1"],
                            sample["uptime_s"],
                            sample["tunnel_up"],
                            sample["conntrack"],
                            sample["rx_bps"],
                            sample["tx_bps"],
                            wans_up,
                            len(wans),
                        )
                    )
                    for wan in wans:
                        wan_rows.append(
                            (
                                box_id,
                                message.seq,
                                ts,
                                _clean(wan["iface"]),
                                wan["kind"],
                                wan["up"],
                                wan["rtt_ms"],
                                wan["jitter_ms"],
                                wan["loss_pct"],
                                wan["rx_bps"],
                                wan["tx_bps"],
                                wan["subflows"],
                            )
                        )
                    timed.append((ts, sample))
                accepted.append((message, timed))

            if box_rows:
                async with cur.copy(
                    f"COPY telemetry_box_sample ({BOX_SAMPLE_COLUMNS}) FROM STDIN (FORMAT BINARY)"
                ) as copy:
                    copy.set_types(BOX_SAMPLE_TYPES)
                    for row in box_rows:
                        await copy.write_row(row)
            if wan_rows:
                async with cur.copy(
                    f"COPY telemetry_wan_sample ({WAN_SAMPLE_COLUMNS}) FROM STDIN (FORMAT BINARY)"
                ) as copy:
                    copy.set_types(WAN_SAMPLE_TYPES)
                    for row in wan_rows:
                        await copy.write_row(row)

            if accepted:
                accepted_boxes = sorted({message.box_id for message, _ in accepted})
                await cur.execute(WAN_PREVIOUS_SQL, (accepted_boxes,))
                wan_state: dict[tuple[UUID, str], list[Any]] = {
                    (row[0], row[1]): [row[2], row[3], row[4], None] for row in await cur.fetchall()
                }
                for message, timed in accepted:
                    box_id = message.box_id
                    row = locked[box_id]
                    for ts, sample in sorted(timed, key=lambda pair: pair[0]):
                        for wan in sample["wans"]:
                            key = (box_id, _clean(wan["iface"]))
                            state = wan_state.get(key)
                            if state is None:
                                state = wan_state[key] = [wan["up"], ts, None, None]
                                if not wan["up"]:
                                    transitions.append(self._transition(message, wan, ts, "wan_down"))
                            elif state[0] != wan["up"]:
                                state[0] = wan["up"]
                                state[1] = ts
                                transitions.append(
                                    self._transition(message, wan, ts, "wan_up" if wan["up"] else "wan_down")
                                )
                            degraded = is_degraded(wan)
                            if degraded and state[2] is None:
                                state[2] = ts
                            elif not degraded:
                                state[2] = None
                            state[3] = (wan, ts)
                        update = updates.get(box_id)
                        if update is None or ts >= update.latest_ts:
                            updates[box_id] = _BoxUpdate(
                                last_seq=message.seq,
                                latest=sample,
                                latest_ts=ts,
                                dropped=message.dropped,
                                revive=(not row[2]) and row[3] == message.session_id,
                            )
                    current = updates[box_id]
                    current.last_seq = max(current.last_seq, message.seq)
                    if message.dropped is not None:
                        current.dropped = message.dropped
                await self._update_status(cur, updates)
                await self._upsert_wans(cur, wan_state, now_dt)
        self.stats["batches"] += 1
        self.stats["messages"] += len(batch)
        self.stats["samples"] += len(box_rows)
        self.stats["duplicates"] += sum(1 for result in results if result is False)
        return results, transitions, updates

    @staticmethod
    def _transition(message: _Message, wan: dict[str, Any], ts: datetime, kind: str) -> dict[str, Any]:
        return {
            "box_id": message.box_id,
            "organization_id": message.organization_id,
            "kind": kind,
            "ts": ts,
            "data": {"iface": wan["iface"], "label": wan["label"], "kind": wan["kind"]},
        }

    @staticmethod
    async def _update_status(cur: psycopg.AsyncCursor, updates: dict[UUID, _BoxUpdate]) -> None:
        columns: list[list[Any]] = [[] for _ in range(13)]
        for box_id, update in updates.items():
            sample = update.latest
            wans = sample["wans"]
            values = (
                box_id,
                update.last_seq,
                sample["cpu_pct"],
                sample["mem_pct"],
                sample["load1"],
                sample["uptime_s"],
                sample["tunnel_up"],
                sample["rx_bps"],
                sample["tx_bps"],
                sum(1 for wan in wans if wan["up"]),
                len(wans),
                update.dropped,
                update.revive,
            )
            for column, value in zip(columns, values, strict=True):
                column.append(value)
        await cur.execute(UPDATE_STATUS_SQL, columns)

    @staticmethod
    async def _upsert_wans(
        cur: psycopg.AsyncCursor, wan_state: dict[tuple[UUID, str], list[Any]], now_dt: datetime
    ) -> None:
        columns: list[list[Any]] = [[] for _ in range(15)]
        for (box_id, iface), (up, changed_at, degraded_since, latest) in sorted(wan_state.items()):
            if latest is None:
                continue
            wan, _ts = latest
            values = (
                box_id,
                iface,
                _clean(wan["label"]),
                wan["kind"],
                up,
                wan["rtt_ms"],
                wan["jitter_ms"],
                wan["loss_pct"],
                wan["rx_bps"],
                wan["tx_bps"],
                _ip_or_none(wan["public_ip"]),
                wan["subflows"],
                changed_at,
                degraded_since,
                now_dt,
            )
            for column, value in zip(columns, values, strict=True):
                column.append(value)
        if columns[0]:
            await cur.execute(UPSERT_WAN_SQL, columns)

    # -- after commit --------------------------------------------------------------------------
    def _after_commit(
        self, batch: list[_Message], transitions: list[dict[str, Any]], updates: dict[UUID, _BoxUpdate]
    ) -> None:
        revived = [
            {"box_id": box_id, "organization_id": None, "kind": "box_online", "ts": None, "data": {}}
            for box_id, update in updates.items()
            if update.revive
        ]
        events = transitions + revived
        if events:
            organizations = {message.box_id: message.organization_id for message in batch}
            for event in events:
                event["organization_id"] = organizations.get(event["box_id"])
            self._spawn(self._record_events(events))
        if updates:
            self._spawn(self._broadcast(batch, updates))

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _record_events(self, events: list[dict[str, Any]]) -> None:
        from channels.db import database_sync_to_async

        try:
            await database_sync_to_async(record_events)(events)
        except Exception:  # events are a side effect of committed telemetry; never fail the writer
            logger.exception("recording %d telemetry events failed", len(events))

    async def _broadcast(self, batch: list[_Message], updates: dict[UUID, _BoxUpdate]) -> None:
        from fleet.live import abroadcast_to_people

        now = time.monotonic()
        organizations = {message.box_id: message.organization_id for message in batch}
        for box_id, update in updates.items():
            if now - self._last_broadcast.get(box_id, 0.0) < self.broadcast_interval:
                continue
            self._last_broadcast[box_id] = now
            await abroadcast_to_people(box_id, organizations.get(box_id), telemetry_payload(box_id, update))
        if len(self._last_broadcast) > 100000:
            self._last_broadcast.clear()


def telemetry_payload(box_id: UUID, update: _BoxUpdate) -> dict[str, Any]:
    """The compact live update people receive (at most every LIVE_BROADCAST_INTERVAL_S per box)."""
    sample = update.latest
    return {
        "kind": "telemetry",
        "box_id": str(box_id),
        "ts": update.latest_ts.isoformat(),
        "seq": update.last_seq,
        "cpu_pct": sample["cpu_pct"],
        "mem_pct": sample["mem_pct"],
        "load1": sample["load1"],
        "tunnel_up": sample["tunnel_up"],
        "rx_bps": sample["rx_bps"],
        "tx_bps": sample["tx_bps"],
        "wans": [
            {
                "iface": wan["iface"],
                "kind": wan["kind"],
                "up": wan["up"],
                "rtt_ms": wan["rtt_ms"],
                "loss_pct": wan["loss_pct"],
                "rx_bps": wan["rx_bps"],
                "tx_bps": wan["tx_bps"],
            }
            for wan in sample["wans"]
        ],
    }


def record_events(events: list[dict[str, Any]]) -> None:
    """Hand events to the monitoring app (tolerates its absence while it is being built)."""
    from django.apps import apps

    if not apps.is_installed("fleet.monitoring"):
        return
    try:
        from fleet.monitoring.services import events_record_batch
    except ImportError:
        logger.info("fleet.monitoring not available; %d telemetry events not recorded", len(events))
        return
    events_record_batch(
        [
            {
                "box_id": event["box_id"],
                "organization_id": event["organization_id"],
                "kind": event["kind"],
                "data": event["data"],
                "ts": event["ts"],
            }
            for event in events
        ]
    )


_writers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, TelemetryWriter] = weakref.WeakKeyDictionary()


def get_writer() -> TelemetryWriter:
    """The writer of the running event loop (one per process in production, one per test loop)."""
    loop = asyncio.get_running_loop()
    writer = _writers.get(loop)
    if writer is None:
        writer = _writers[loop] = TelemetryWriter()
    return writer


async def close_writer() -> None:
    loop = asyncio.get_running_loop()
    writer = _writers.pop(loop, None)
    if writer is not None:
        await writer.close()
