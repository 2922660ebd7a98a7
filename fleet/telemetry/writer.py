"""The per-process telemetry writer: the hot path between agent sessions and PostgreSQL.

Consumers ``await writer.submit(...)``; the batching engine (``fleet.core.batching``) gathers messages
for up to ``flush_interval_ms`` (or ``max_batch`` messages) and this module stores each batch in ONE
transaction on one of the loop's own psycopg ``AsyncConnection``s (no Django ORM here, no thread hop):

1. lock the boxes' ``telemetry_boxstatus`` rows in primary-key order (no deadlocks between
   processes) and read the ``last_seq`` watermark;
2. drop messages whose ``seq <= last_seq`` (duplicates: acknowledged again, never stored twice);
3. ``COPY`` the samples into the partitioned ``telemetry_box_sample`` / ``telemetry_wan_sample``;
   and mark the hours of samples too old for the rollups' lookback (``StaleRollup``: the rollup task
   re-rolls them, docs/telemetry.md "Late samples");
4. apply the WAN rules (``fleet.telemetry.transitions``) to the previous ``telemetry_wanstatus``
   rows, move the watermark and the live status, upsert the WAN rows, and insert the timeline events
   (``wan_up`` / ``wan_down``, ``box_online`` for a revived box), all in the same transaction;
5. commit, THEN resolve the futures: an ``ack`` therefore always means "committed", events included.

After the commit the events and a compact, per-box throttled update are broadcast to people. If the
database is unreachable the futures fail with :class:`StorageUnavailable` and nothing is acknowledged;
the agent resends. The columns written are specified once in ``fleet.telemetry.schema``.
"""

from __future__ import annotations

import collections
import functools
import ipaddress
import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, cast
from uuid import UUID

import psycopg
from django.conf import settings

from fleet.core.batching import Batcher, Committed, PerLoop
from fleet.core.doorbells import abroadcast_to_people
from fleet.core.events import EVENTS_INSERT_SQL, aevents_broadcast, event_rows
from fleet.core.live_connections import LiveConnections
from fleet.telemetry.schema import (
    BOX_SAMPLE,
    BOX_STATUS_APPLY,
    BOX_STATUS_CREATE,
    INCOMING_BOX_STATUS,
    INCOMING_WAN_STATUS,
    STALE_ROLLUP_INSERT_SQL,
    WAN_SAMPLE,
    WAN_STATUS_KEY,
    WAN_STATUS_UPSERT,
    upsert_sql,
)
from fleet.telemetry.transitions import BoxWans, WanState, boxes_due, wans_advance

logger = logging.getLogger(__name__)

# Sample timestamps outside [MIN_TS, now + MAX_FUTURE_S] come from a clock that cannot be trusted (no
# RTC before NTP, a clock running ahead): they are stored at the receive time rather than refused, so
# an acknowledged sample is never lost and a box with a wrong clock never blocks its agent's queue.
# A clock behind is trusted: its samples are late samples (``stale_after``).
MIN_TS = 946684800.0  # 2000-01-01
MAX_FUTURE_S = 300.0


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


@dataclass(slots=True)
class _BoxUpdate:
    last_seq: int
    latest: dict[str, Any]
    latest_ts: datetime
    dropped: int | None
    revive: bool


def stale_after() -> timedelta:
    """A sample older than this when stored marks its hour stale (``StaleRollup``). Half the rollups'
    lookback: a sample younger than that is in the next rollup run's lookback window even when a run
    that could not see it (its transaction had not committed) moved the watermark meanwhile."""
    return timedelta(minutes=cast(int, settings.OTB.get("ROLLUP_LOOKBACK_MINUTES", 60))) / 2


def _hour_of(moment: datetime) -> datetime:
    return moment.replace(minute=0, second=0, microsecond=0)


def sample_time(ts: float, received: float) -> datetime:
    if not (MIN_TS <= ts <= received + MAX_FUTURE_S) or not math.isfinite(ts):
        ts = received
    return datetime.fromtimestamp(ts, UTC)


def _clean(text: str) -> str:
    return text.replace("\x00", "") if "\x00" in text else text


def _link_name(wan: Mapping[str, Any]) -> str:
    """The name a WAN link is stored under (PostgreSQL text cannot hold NUL)."""
    return _clean(wan["iface"])


@functools.lru_cache(maxsize=65536)
def _ip_or_none(value: str | None) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    if not value:
        return None
    try:
        return ipaddress.ip_address(value)
    except ValueError:
        return None


def _box_of(message: _Message) -> UUID:
    return message.box_id


def _rejected(exc: psycopg.Error) -> Exception:
    return TelemetryRejected(str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__)


def _overloaded() -> Exception:
    return StorageUnavailable("telemetry writer overloaded", retry_after_s=2.0)


LOCK_SQL = (
    "SELECT box_id, last_seq, online, session_id, tunnel_up FROM telemetry_boxstatus "
    "WHERE box_id = ANY(%s) ORDER BY box_id FOR UPDATE"
)
# Every column but the key has a database default (BoxStatus fields' ``db_default``).
CREATE_STATUS_SQL = (
    f"INSERT INTO {BOX_STATUS_CREATE.table} ({BOX_STATUS_CREATE.column_list}) "  # noqa: S608
    "SELECT id FROM fleet_box WHERE id = ANY(%s) ON CONFLICT (box_id) DO NOTHING"
)
# Per-batch status rows are COPYed (binary) into session temp tables, then applied set-wise: far
# cheaper than dumping Python lists into array parameters.
TEMP_TABLES_SQL = (
    f"{BOX_STATUS_APPLY.temp_table_sql(INCOMING_BOX_STATUS)};\n"
    f"{WAN_STATUS_UPSERT.temp_table_sql(INCOMING_WAN_STATUS)};"
)
UPDATE_STATUS_SQL = f"""
UPDATE telemetry_boxstatus AS s SET
    last_seq = v.last_seq, last_seen_at = now(), cpu_pct = v.cpu_pct, mem_pct = v.mem_pct,
    mem_free_kb = v.mem_free_kb, load1 = v.load1, uptime_s = v.uptime_s, tunnel_up = v.tunnel_up,
    rx_bps = v.rx_bps, tx_bps = v.tx_bps, wans_up = v.wans_up, wans_total = v.wans_total,
    dropped_samples = COALESCE(v.dropped_samples, s.dropped_samples),
    online = s.online OR v.revive, offline_since = CASE WHEN v.revive THEN NULL ELSE s.offline_since END,
    updated_at = now()
FROM {INCOMING_BOX_STATUS} AS v
WHERE s.box_id = v.box_id
"""  # noqa: S608 (identifiers from the schema module)
TOUCH_SQL = "UPDATE telemetry_boxstatus SET last_seen_at = now() WHERE box_id = ANY(%s)"
WAN_PREVIOUS_SQL = (
    "SELECT box_id, iface, up, up_changed_at, degraded_since FROM telemetry_wanstatus WHERE box_id = ANY(%s)"
)
UPSERT_WAN_SQL = upsert_sql(WAN_STATUS_UPSERT, source=INCOMING_WAN_STATUS, key=WAN_STATUS_KEY)


class TelemetryWriter:
    """Stores the telemetry of every session of this event loop in few large transactions."""

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
        self.broadcast_interval = float(otb.get("LIVE_BROADCAST_INTERVAL_S", 5))
        self.live_status_interval = float(otb.get("LIVE_STATUS_MIN_INTERVAL_S", 1))
        self.stale_after = stale_after()
        self._touches: set[UUID] = set()
        self._last_broadcast: dict[UUID, float] = {}
        self._wan_written: dict[UUID, float] = {}
        self._partitions_checked = 0.0
        self.stats = {"batches": 0, "messages": 0, "duplicates": 0, "samples": 0}
        # Seconds spent per phase (lock, prepare, copy, transitions, box_status, wan_status, events, commit).
        self.phase_s: dict[str, float] = collections.defaultdict(float)
        self.batches: Batcher[_Message] = Batcher(
            name="telemetry-writer",
            connections=self.connections,
            store=self._store,
            unavailable=StorageUnavailable,
            rejected=_rejected,
            max_batch=max_batch or otb.get("TELEMETRY_MAX_BATCH", 500),
            flush_interval_s=(flush_interval_ms or otb.get("TELEMETRY_FLUSH_INTERVAL_MS", 50)) / 1000,
            # Up to this many batches are stored concurrently, each on its own connection; a box is
            # never in two batches in flight, so its messages still commit in seq order.
            concurrency=int(otb.get("TELEMETRY_WRITER_CONNECTIONS", 2)),
            key=_box_of,
            max_pending=max_pending or otb.get("TELEMETRY_MAX_PENDING", 20000),
            overloaded=_overloaded,
            side_work=self._take_touches,
            timings=self.phase_s,
        )

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
        message = _Message(box_id, organization_id, session_id, seq, samples, dropped)
        return cast(bool, await self.batches.submit(message))

    def touch(self, box_id: UUID) -> None:
        """Note that the box was seen (a heartbeat); stored with the next batch."""
        self._touches.add(box_id)
        self.batches.wake()

    def _take_touches(self) -> set[UUID] | None:
        if not self._touches:
            return None
        touches, self._touches = self._touches, set()
        return touches

    async def close(self) -> None:
        await self.batches.close()
        await self.connections.close()

    # -- a new connection ------------------------------------------------------------------------
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

    # -- one batch, in the engine's transaction --------------------------------------------------
    async def _store(
        self, cur: psycopg.AsyncCursor[Any], batch: list[_Message], touches: set[UUID] | None
    ) -> Committed:
        received = time.time()
        now_dt = datetime.fromtimestamp(received, UTC)
        results: list[bool | Exception] = [False] * len(batch)
        clock = time.perf_counter
        phases = self.phase_s
        mark = clock()
        if touches:
            await cur.execute(TOUCH_SQL, (list(touches),))
        box_ids = sorted({message.box_id for message in batch})
        if not box_ids:
            return Committed(results)
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
        box_rows: list[tuple[Any, ...]] = []
        wan_rows: list[tuple[Any, ...]] = []
        stale_before = now_dt - self.stale_after
        stale: set[tuple[UUID, datetime]] = set()
        # The accepted messages of each box in seq order, each with its samples in time order.
        accepted: dict[UUID, list[tuple[_Message, list[tuple[datetime, dict[str, Any]]]]]] = {}
        # The links' stored states, read here already when a reading leaves ``up`` to them (None).
        previous: dict[UUID, dict[str, WanState]] | None = None
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
                if any(wan["up"] is None for wan in wans):
                    if previous is None:
                        previous = await self._wan_previous(cur, list(locked))
                    wans = sample["wans"] = _wans_resolved(wans, previous.get(box_id, {}))
                if sample["tunnel_up"] is None:
                    # A source that does not say (a stock OverTheBox box): the stored state stands.
                    sample["tunnel_up"] = locked[box_id][4]
                wans_up = sum(1 for wan in wans if wan["up"])
                # In the order of BOX_SAMPLE's columns.
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
                        # Not in an agent's frame (its protocol has no such field): null.
                        sample.get("mem_free_kb"),
                    )
                )
                for wan in wans:
                    # In the order of WAN_SAMPLE's columns.
                    wan_rows.append(
                        (
                            box_id,
                            message.seq,
                            ts,
                            _link_name(wan),
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
                if ts < stale_before:
                    stale.add((box_id, _hour_of(ts)))
            timed.sort(key=_time_of)
            accepted.setdefault(box_id, []).append((message, timed))

        now_mark = clock()
        phases["prepare"] += now_mark - mark
        mark = now_mark
        if box_rows:
            async with cur.copy(BOX_SAMPLE.copy_sql()) as copy:
                copy.set_types(BOX_SAMPLE.copy_types)
                for row in box_rows:
                    await copy.write_row(row)
        if wan_rows:
            async with cur.copy(WAN_SAMPLE.copy_sql()) as copy:
                copy.set_types(WAN_SAMPLE.copy_types)
                for row in wan_rows:
                    await copy.write_row(row)
        if stale:
            boxes, hours = zip(*sorted(stale), strict=True)
            await cur.execute(STALE_ROLLUP_INSERT_SQL, (list(boxes), list(hours)))

        now_mark = clock()
        phases["copy"] += now_mark - mark
        mark = now_mark
        if not accepted:
            self._count(batch, results, box_rows)
            return Committed(results)
        if previous is None:
            previous = await self._wan_previous(cur, list(accepted))
        advances: dict[UUID, BoxWans] = {}
        updates: dict[UUID, _BoxUpdate] = {}
        events: list[tuple[Any, Any, datetime, str, dict[str, Any]]] = []
        for box_id, messages in accepted.items():
            organization_id = messages[-1][0].organization_id
            advance = advances[box_id] = wans_advance(
                previous.get(box_id, {}), [timed for _, timed in messages], name=_link_name
            )
            for transition in advance.transitions:
                wan = transition.reading
                data = {"iface": _link_name(wan), "label": _clean(wan["label"]), "kind": wan["kind"]}
                events.append((box_id, organization_id, transition.ts, transition.kind, data))
            update = self._box_update(locked[box_id], messages)
            if update is not None:
                updates[box_id] = update
                if update.revive:
                    events.append((box_id, organization_id, now_dt, "box_online", {}))
        now_mark = clock()
        phases["transitions"] += now_mark - mark
        mark = now_mark
        await self._update_status(cur, updates)
        now_mark = clock()
        phases["box_status"] += now_mark - mark
        mark = now_mark
        await self._upsert_wans(cur, advances, now_dt)
        now_mark = clock()
        phases["wan_status"] += now_mark - mark
        mark = now_mark
        recorded: list[Any] = []
        if events:
            recorded, columns = event_rows(events)
            await cur.execute(EVENTS_INSERT_SQL, columns)
        phases["events"] += clock() - mark
        self._count(batch, results, box_rows)
        organizations = {message.box_id: message.organization_id for message in batch}

        async def after_commit() -> None:
            if recorded:
                await aevents_broadcast(recorded)
            await self._broadcast(organizations, updates)

        return Committed(results, after_commit)

    @staticmethod
    async def _wan_previous(
        cur: psycopg.AsyncCursor[Any], box_ids: list[UUID]
    ) -> dict[UUID, dict[str, WanState]]:
        """The stored state of the links of ``box_ids`` (read under the boxes' status row locks)."""
        await cur.execute(WAN_PREVIOUS_SQL, (box_ids,))
        previous: dict[UUID, dict[str, WanState]] = {}
        for box_id, iface, up, up_changed_at, degraded_since in await cur.fetchall():
            previous.setdefault(box_id, {})[iface] = WanState(up, up_changed_at, degraded_since)
        return previous

    def _count(self, batch: list[_Message], results: list[bool | Exception], box_rows: list[Any]) -> None:
        self.stats["batches"] += 1
        self.stats["messages"] += len(batch)
        self.stats["samples"] += len(box_rows)
        self.stats["duplicates"] += sum(1 for result in results if result is False)

    @staticmethod
    def _box_update(
        locked: tuple[Any, ...], messages: list[tuple[_Message, list[tuple[datetime, dict[str, Any]]]]]
    ) -> _BoxUpdate | None:
        """A box's new live status: its latest sample by time (the last one applied on a tie), the
        highest seq, the last ``dropped`` reported; ``revive`` when the box is marked offline but
        this is its current session."""
        _, _, online, session_id, _ = locked
        update: _BoxUpdate | None = None
        for message, timed in messages:
            for ts, sample in timed:
                if update is None or ts >= update.latest_ts:
                    update = _BoxUpdate(
                        last_seq=message.seq,
                        latest=sample,
                        latest_ts=ts,
                        dropped=message.dropped,
                        revive=(not online) and session_id == message.session_id,
                    )
            if update is not None:
                update.last_seq = max(update.last_seq, message.seq)
                if message.dropped is not None:
                    update.dropped = message.dropped
        return update

    @staticmethod
    async def _update_status(cur: psycopg.AsyncCursor[Any], updates: dict[UUID, _BoxUpdate]) -> None:
        async with cur.copy(BOX_STATUS_APPLY.copy_sql(INCOMING_BOX_STATUS)) as copy:
            copy.set_types(BOX_STATUS_APPLY.copy_types)
            for box_id, update in updates.items():
                sample = update.latest
                wans = sample["wans"]
                # In the order of BOX_STATUS_APPLY's columns, then its extra ``revive``.
                await copy.write_row(
                    (
                        box_id,
                        update.last_seq,
                        sample["cpu_pct"],
                        sample["mem_pct"],
                        sample.get("mem_free_kb"),
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

    async def _upsert_wans(
        self, cur: psycopg.AsyncCursor[Any], advances: dict[UUID, BoxWans], now_dt: datetime
    ) -> None:
        """Write the WAN rows of the boxes due (see ``transitions.boxes_due``)."""
        now = time.monotonic()
        due = boxes_due(advances, self._wan_written, now=now, min_interval=self.live_status_interval)
        if len(self._wan_written) > 200_000:
            self._wan_written.clear()
        for box_id in due:
            self._wan_written[box_id] = now
        if not due:
            return
        # Sorted so that concurrent writers (several processes) lock WAN rows in the same order.
        async with cur.copy(WAN_STATUS_UPSERT.copy_sql(INCOMING_WAN_STATUS)) as copy:
            copy.set_types(WAN_STATUS_UPSERT.copy_types)
            for box_id in sorted(due):
                for iface, link in sorted(advances[box_id].links.items()):
                    wan, state = link.latest, link.state
                    # In the order of WAN_STATUS_UPSERT's columns.
                    await copy.write_row(
                        (
                            box_id,
                            iface,
                            _clean(wan["label"]),
                            wan["kind"],
                            state.up,
                            wan["rtt_ms"],
                            wan["jitter_ms"],
                            wan["loss_pct"],
                            wan["rx_bps"],
                            wan["tx_bps"],
                            _ip_or_none(wan["public_ip"]),
                            wan["subflows"],
                            state.up_changed_at,
                            state.degraded_since,
                            now_dt,
                        )
                    )
        await cur.execute(UPSERT_WAN_SQL)

    # -- after commit --------------------------------------------------------------------------
    async def _broadcast(self, organizations: dict[UUID, Any], updates: dict[UUID, _BoxUpdate]) -> None:
        now = time.monotonic()
        for box_id, update in updates.items():
            if now - self._last_broadcast.get(box_id, 0.0) < self.broadcast_interval:
                continue
            self._last_broadcast[box_id] = now
            await abroadcast_to_people(box_id, organizations.get(box_id), telemetry_payload(box_id, update))
        if len(self._last_broadcast) > 100000:
            self._last_broadcast.clear()


def _wans_resolved(wans: list[dict[str, Any]], stored: Mapping[str, WanState]) -> list[dict[str, Any]]:
    """The readings with ``up: None`` (a source that does not say, e.g. a stock OverTheBox box's
    metrics: its link state comes from its interface events) given the link's stored state; a link
    with no row yet is up when it has an RTT (the box's tracker got an answer over it)."""
    resolved = []
    for wan in wans:
        if wan["up"] is None:
            known = stored.get(_link_name(wan))
            wan = {**wan, "up": known.up if known is not None else wan["rtt_ms"] is not None}
        resolved.append(wan)
    return resolved


def _time_of(pair: tuple[datetime, dict[str, Any]]) -> datetime:
    return pair[0]


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
        "mem_free_kb": sample.get("mem_free_kb"),
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


_writers: PerLoop[TelemetryWriter] = PerLoop(TelemetryWriter)


def get_writer() -> TelemetryWriter:
    """The writer of the running event loop (one per process in production, one per test loop)."""
    return _writers.get()


async def close_writer() -> None:
    await _writers.close()
