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
import collections
import contextlib
import functools
import ipaddress
import logging
import math
import time
import weakref
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast
from uuid import UUID

import psycopg
from channels.db import database_sync_to_async
from django.conf import settings

from fleet.core.doorbells import abroadcast_to_people
from fleet.core.events import events_record_batch
from fleet.core.live_connections import DISCONNECTED, LiveConnections

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


@functools.lru_cache(maxsize=65536)
def _ip_or_none(value: str | None) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    if not value:
        return None
    try:
        return ipaddress.ip_address(value)
    except ValueError:
        return None


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
# Per-batch status rows are COPYed (binary) into session temp tables, then applied set-wise: far
# cheaper than dumping Python lists into array parameters.
TEMP_TABLES_SQL = """
CREATE TEMP TABLE IF NOT EXISTS incoming_box_status (
    box_id uuid, last_seq int8, cpu_pct float8, mem_pct float8, load1 float8, uptime_s int8, tunnel_up bool,
    rx_bps int8, tx_bps int8, wans_up int4, wans_total int4, dropped int8, revive bool
) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS incoming_wan_status (
    box_id uuid, iface varchar(32), label varchar(64), kind varchar(16), up bool, rtt_ms float8,
    jitter_ms float8, loss_pct float8, rx_bps int8, tx_bps int8, public_ip inet, subflows int4,
    up_changed_at timestamptz, degraded_since timestamptz, updated_at timestamptz
) ON COMMIT DELETE ROWS;
"""
BOX_STATUS_TYPES = [
    "uuid",
    "int8",
    "float8",
    "float8",
    "float8",
    "int8",
    "bool",
    "int8",
    "int8",
    "int4",
    "int4",
    "int8",
    "bool",
]
WAN_STATUS_TYPES = [
    "uuid",
    "varchar",
    "varchar",
    "varchar",
    "bool",
    "float8",
    "float8",
    "float8",
    "int8",
    "int8",
    "inet",
    "int4",
    "timestamptz",
    "timestamptz",
    "timestamptz",
]
UPDATE_STATUS_SQL = """
UPDATE telemetry_boxstatus AS s SET
    last_seq = v.last_seq, last_seen_at = now(), cpu_pct = v.cpu_pct, mem_pct = v.mem_pct,
    load1 = v.load1, uptime_s = v.uptime_s, tunnel_up = v.tunnel_up, rx_bps = v.rx_bps,
    tx_bps = v.tx_bps, wans_up = v.wans_up, wans_total = v.wans_total,
    dropped_samples = COALESCE(v.dropped, s.dropped_samples),
    online = s.online OR v.revive, offline_since = CASE WHEN v.revive THEN NULL ELSE s.offline_since END,
    updated_at = now()
FROM incoming_box_status AS v
WHERE s.box_id = v.box_id
"""
TOUCH_SQL = "UPDATE telemetry_boxstatus SET last_seen_at = now() WHERE box_id = ANY(%s)"
WAN_PREVIOUS_SQL = (
    "SELECT box_id, iface, up, up_changed_at, degraded_since FROM telemetry_wanstatus WHERE box_id = ANY(%s)"
)
UPSERT_WAN_SQL = """
INSERT INTO telemetry_wanstatus (box_id, iface, label, kind, up, rtt_ms, jitter_ms, loss_pct, rx_bps,
    tx_bps, public_ip, subflows, up_changed_at, degraded_since, updated_at)
SELECT box_id, iface, label, kind, up, rtt_ms, jitter_ms, loss_pct, rx_bps, tx_bps, public_ip, subflows,
    up_changed_at, degraded_since, updated_at FROM incoming_wan_status
ON CONFLICT (box_id, iface) DO UPDATE SET
    label = EXCLUDED.label, kind = EXCLUDED.kind, up = EXCLUDED.up, rtt_ms = EXCLUDED.rtt_ms,
    jitter_ms = EXCLUDED.jitter_ms, loss_pct = EXCLUDED.loss_pct, rx_bps = EXCLUDED.rx_bps,
    tx_bps = EXCLUDED.tx_bps, public_ip = EXCLUDED.public_ip, subflows = EXCLUDED.subflows,
    up_changed_at = EXCLUDED.up_changed_at, degraded_since = EXCLUDED.degraded_since,
    updated_at = EXCLUDED.updated_at
"""


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
        otb = cast(dict[str, Any], settings.OTB)
        self.connections = LiveConnections(role="telemetry-writer", conninfo=conninfo, setup=self._setup)
        self.flush_interval = (flush_interval_ms or otb.get("TELEMETRY_FLUSH_INTERVAL_MS", 50)) / 1000
        self.max_batch = max_batch or otb.get("TELEMETRY_MAX_BATCH", 500)
        self.max_pending = max_pending or otb.get("TELEMETRY_MAX_PENDING", 20000)
        self.broadcast_interval = float(otb.get("LIVE_BROADCAST_INTERVAL_S", 5))
        self._queue: list[_Message] = []
        self._touches: set[UUID] = set()
        self._wake = asyncio.Event()
        self._full = asyncio.Event()
        self._task: asyncio.Task | None = None
        # Up to ``flushers`` batches are stored concurrently, each on its own connection; a box is
        # never in two in-flight batches, so its messages still commit in seq order.
        self.flushers = int(otb.get("TELEMETRY_WRITER_CONNECTIONS", 2))
        self._inflight_boxes: set[UUID] = set()
        self._flushing = 0
        self._slot = asyncio.Event()
        self._background: set[asyncio.Task] = set()
        self._last_broadcast: dict[UUID, float] = {}
        self._wan_written: dict[UUID, float] = {}
        self.live_status_interval = float(otb.get("LIVE_STATUS_MIN_INTERVAL_S", 1))
        self._partitions_checked = 0.0
        self.stats = {"batches": 0, "messages": 0, "duplicates": 0, "samples": 0}
        # Seconds spent per flush phase (lock, prepare, copy, transitions, box_status, wan_status, commit).
        self.phase_s: collections.Counter[str] = collections.Counter()

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
        await self.connections.close()

    # -- the loop ------------------------------------------------------------------------------
    def _ensure_running(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="telemetry-writer")

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            while self._flushing >= self.flushers:
                self._slot.clear()
                await self._slot.wait()
            if len(self._queue) < self.max_batch:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._full.wait(), self.flush_interval)
            self._wake.clear()
            self._full.clear()
            batch = self._take_batch()
            touches, self._touches = self._touches, set()
            if not batch and not touches:
                # Everything queued belongs to boxes being flushed: wait for a flush to finish. (Looping
                # instead never yielded when the queue was full, since set events return at once, so
                # the flush in flight could not progress: a livelock at 100 % CPU under load.)
                if self._flushing > 0:
                    self._slot.clear()
                    await self._slot.wait()
                continue
            self._flushing += 1
            boxes = {message.box_id for message in batch}
            self._inflight_boxes |= boxes
            self._spawn(self._flush_guarded(batch, touches, boxes))

    def _take_batch(self) -> list[_Message]:
        """Up to max_batch queued messages, skipping (keeping) those of boxes being flushed."""
        if not self._inflight_boxes:
            batch, self._queue = self._queue[: self.max_batch], self._queue[self.max_batch :]
        else:
            batch, rest = [], []
            for message in self._queue:
                if len(batch) < self.max_batch and message.box_id not in self._inflight_boxes:
                    batch.append(message)
                else:
                    rest.append(message)
            self._queue = rest
        if self._queue:
            self._wake.set()
            if len(self._queue) >= self.max_batch:
                self._full.set()
        return batch

    async def _flush_guarded(self, batch: list[_Message], touches: set[UUID], boxes: set[UUID]) -> None:
        try:
            await self._flush(batch, touches)
        except Exception:  # the writer must survive anything
            logger.exception("telemetry flush crashed")
            self._fail(batch, StorageUnavailable("telemetry flush failed"))
        finally:
            self._flushing -= 1
            self._inflight_boxes -= boxes
            self._slot.set()
            if self._queue or self._touches:
                self._wake.set()

    async def _setup(self, conn: psycopg.AsyncConnection) -> None:
        await self._ensure_partitions(conn)
        async with conn.transaction():
            await conn.execute(TEMP_TABLES_SQL)

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
        conn = None
        try:
            conn = await self.connections.acquire()
            outcome = await self._store(conn, batch, touches)
            self.connections.release(conn)
        except DISCONNECTED as exc:
            logger.warning("telemetry storage unavailable: %s", exc)
            if conn is not None:
                await self.connections.discard(conn)
            self._fail(batch, StorageUnavailable("telemetry storage unavailable"))
            return
        except psycopg.Error as exc:
            if conn is not None:
                self.connections.release(conn)
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
        clock = time.perf_counter
        # A Counter of float seconds (typeshed types Counter values as int).
        phases = cast(dict[str, float], self.phase_s)
        mark = clock()
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

            now_mark = clock()
            phases["lock"] += now_mark - mark
            mark = now_mark
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

            now_mark = clock()
            phases["prepare"] += now_mark - mark
            mark = now_mark
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

            now_mark = clock()
            phases["copy"] += now_mark - mark
            mark = now_mark
            if accepted:
                accepted_boxes = sorted({message.box_id for message, _ in accepted})
                await cur.execute(WAN_PREVIOUS_SQL, (accepted_boxes,))
                wan_state: dict[tuple[UUID, str], list[Any]] = {
                    (row[0], row[1]): [row[2], row[3], row[4], None, False] for row in await cur.fetchall()
                }
                for message, timed in accepted:
                    box_id = message.box_id
                    row = locked[box_id]
                    for ts, sample in sorted(timed, key=lambda pair: pair[0]):
                        for wan in sample["wans"]:
                            key = (box_id, _clean(wan["iface"]))
                            state = wan_state.get(key)
                            if state is None:
                                state = wan_state[key] = [wan["up"], ts, None, None, True]
                                if not wan["up"]:
                                    transitions.append(self._transition(message, wan, ts, "wan_down"))
                            elif state[0] != wan["up"]:
                                state[0] = wan["up"]
                                state[1] = ts
                                state[4] = True
                                transitions.append(
                                    self._transition(message, wan, ts, "wan_up" if wan["up"] else "wan_down")
                                )
                            degraded = is_degraded(wan)
                            if degraded and state[2] is None:
                                state[2] = ts
                                state[4] = True
                            elif not degraded and state[2] is not None:
                                state[2] = None
                                state[4] = True
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
                now_mark = clock()
                phases["transitions"] += now_mark - mark
                mark = now_mark
                await self._update_status(cur, updates)
                now_mark = clock()
                phases["box_status"] += now_mark - mark
                mark = now_mark
                await self._upsert_wans(cur, self._wan_rows_due(wan_state), now_dt)
                now_mark = clock()
                phases["wan_status"] += now_mark - mark
                mark = now_mark
        phases["commit"] += clock() - mark
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
        async with cur.copy("COPY incoming_box_status FROM STDIN (FORMAT BINARY)") as copy:
            copy.set_types(BOX_STATUS_TYPES)
            for box_id, update in updates.items():
                sample = update.latest
                wans = sample["wans"]
                await copy.write_row(
                    (
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
                )
        await cur.execute(UPDATE_STATUS_SQL)

    def _wan_rows_due(
        self, wan_state: dict[tuple[UUID, str], list[Any]]
    ) -> dict[tuple[UUID, str], list[Any]]:
        """The WAN rows to write now: every row of a box with a transition (up/down, degraded, new
        link), else a box's rows at most every LIVE_STATUS_MIN_INTERVAL_S. At the agents' normal pace
        (one message per 10 s) that is every message; during a buffer flush or a benchmark burst it
        caps the write amplification of rewriting the same rows many times a second."""
        now = time.monotonic()
        dirty_boxes = {
            box_id for (box_id, _), state in wan_state.items() if state[4] and state[3] is not None
        }
        due_boxes = set()
        for (box_id, _), state in wan_state.items():
            if state[3] is None:
                continue
            if box_id in dirty_boxes or now - self._wan_written.get(box_id, 0.0) >= self.live_status_interval:
                due_boxes.add(box_id)
        for box_id in due_boxes:
            self._wan_written[box_id] = now
        if len(self._wan_written) > 200_000:
            self._wan_written.clear()
        return {key: state for key, state in wan_state.items() if key[0] in due_boxes}

    @staticmethod
    async def _upsert_wans(
        cur: psycopg.AsyncCursor, wan_state: dict[tuple[UUID, str], list[Any]], now_dt: datetime
    ) -> None:
        rows = 0
        # Sorted so that concurrent writers (several processes) lock WAN rows in the same order.
        async with cur.copy("COPY incoming_wan_status FROM STDIN (FORMAT BINARY)") as copy:
            copy.set_types(WAN_STATUS_TYPES)
            for (box_id, iface), (up, changed_at, degraded_since, latest, _dirty) in sorted(
                wan_state.items()
            ):
                if latest is None:
                    continue
                wan, _ts = latest
                rows += 1
                await copy.write_row(
                    (
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
                )
        if rows:
            await cur.execute(UPSERT_WAN_SQL)

    # -- after commit --------------------------------------------------------------------------
    def _after_commit(
        self, batch: list[_Message], transitions: list[dict[str, Any]], updates: dict[UUID, _BoxUpdate]
    ) -> None:
        revived: list[dict[str, Any]] = [
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
        try:
            await database_sync_to_async(record_events)(events)
        except Exception:  # events are a side effect of committed telemetry; never fail the writer
            logger.exception("recording %d telemetry events failed", len(events))

    async def _broadcast(self, batch: list[_Message], updates: dict[UUID, _BoxUpdate]) -> None:
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
    """Append the transition events of a committed batch to the timeline."""
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
