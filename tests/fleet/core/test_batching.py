"""The live paths' batching engine (fleet.core.batching) against real PostgreSQL: results only after
the commit, per-key order, the failure semantics, the replay of a poisoned batch, load shedding, close."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import psycopg
import pytest
from channels.db import database_sync_to_async
from django.db import connection

from fleet.core.batching import Batcher, Committed, PerLoop
from fleet.core.live_connections import LiveConnections, conninfo_from_settings

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.asyncio]

UNREACHABLE = {"host": "127.0.0.1", "port": 1, "dbname": "nowhere", "user": "nobody"}


class Down(Exception):
    def __init__(self, message: str, retry_after_s: float = 5.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class Refused(Exception):
    pass


@dataclass(frozen=True)
class Item:
    key: str
    value: int


@dataclass
class Probe:
    """A store that writes each item into a table and records what it saw."""

    batches: list[list[Item]] = field(default_factory=list)
    side_work: list[Any] = field(default_factory=list)
    inflight: set[str] = field(default_factory=set)
    overlaps: list[str] = field(default_factory=list)
    hold: asyncio.Event | None = None
    delay: float = 0.0

    async def store(self, cur: psycopg.AsyncCursor[Any], items: list[Item], side_work: Any) -> Committed:
        keys = {item.key for item in items}
        self.overlaps += sorted(keys & self.inflight)
        self.inflight |= keys
        try:
            self.batches.append(list(items))
            if side_work is not None:
                self.side_work.append(side_work)
            for item in items:
                # value 0 is a data error (division by zero); -1 kills the connection
                if item.value == -1:
                    await cur.execute("SELECT pg_terminate_backend(pg_backend_pid())")
                await cur.execute(
                    "INSERT INTO batching_probe (key, value) VALUES (%s, 100 / %s)", (item.key, item.value)
                )
            if self.hold is not None:
                await self.hold.wait()
            if self.delay:
                await asyncio.sleep(self.delay)
            return Committed([item.value * 10 for item in items])
        finally:
            self.inflight -= keys


@pytest.fixture
def probe_table() -> Any:
    with connection.cursor() as cursor:
        cursor.execute("CREATE TABLE batching_probe (key text NOT NULL, value integer NOT NULL)")
    yield
    with connection.cursor() as cursor:
        cursor.execute("DROP TABLE batching_probe")


def stored_rows() -> list[tuple[str, int]]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT key, value FROM batching_probe ORDER BY key, value")
        return list(cursor.fetchall())


def make(
    probe: Probe, *, conninfo: dict[str, Any] | None = None, **options: Any
) -> tuple[Batcher[Item], LiveConnections]:
    connections = LiveConnections(role="batching-test", conninfo=conninfo)
    defaults: dict[str, Any] = {
        "name": "probe",
        "connections": connections,
        "store": probe.store,
        "unavailable": Down,
        "rejected": lambda exc: Refused(str(exc)),
        "max_batch": 100,
    }
    return Batcher(**{**defaults, **options}), connections


async def closing(batcher: Batcher[Item], connections: LiveConnections) -> None:
    await batcher.close()
    await connections.close()


async def test_each_call_gets_its_result_once_its_batch_is_committed(probe_table: Any) -> None:
    # given an engine whose store writes each item
    probe = Probe()
    seen_committed: list[bool] = []

    async def call(batcher: Batcher[Item], item: Item) -> Any:
        result = await batcher.submit(item)
        # then when a call returns, its row is visible to another connection: committed
        async with await psycopg.AsyncConnection.connect(**conninfo_from_settings(role="probe")) as other:
            cursor = await other.execute("SELECT count(*) FROM batching_probe WHERE key = %s", (item.key,))
            row = await cursor.fetchone()
            seen_committed.append(row is not None and row[0] == 1)
        return result

    batcher, connections = make(probe)
    try:
        # when twenty calls arrive together
        items = [Item(f"k{index}", index + 1) for index in range(20)]
        results = await asyncio.gather(*(call(batcher, item) for item in items))
    finally:
        await closing(batcher, connections)
    # then each got its own result, in one batch, every row committed before its call returned
    assert results == [(index + 1) * 10 for index in range(20)]
    assert len(probe.batches) == 1
    assert batcher.stats["batches"] == 1 and batcher.stats["items"] == 20
    assert seen_committed == [True] * 20


async def test_a_key_is_never_in_two_batches_in_flight_and_keeps_its_order(probe_table: Any) -> None:
    # given two flush slots, small batches, and slow stores
    probe = Probe(delay=0.02)
    batcher, connections = make(
        probe, concurrency=2, max_batch=3, flush_interval_s=0.005, key=lambda item: item.key
    )
    try:
        # when three keys submit five items each, interleaved
        items = [Item(key, seq) for seq in range(1, 6) for key in ("a", "b", "c")]
        results = await asyncio.wait_for(asyncio.gather(*(batcher.submit(item) for item in items)), 20)
    finally:
        await closing(batcher, connections)
    # then all are stored, a key never overlapped itself in flight, and each key's items were stored
    # in the order they were submitted
    assert results == [item.value * 10 for item in items]
    assert probe.overlaps == []
    for key in ("a", "b", "c"):
        order = [item.value for batch in probe.batches for item in batch if item.key == key]
        assert order == [1, 2, 3, 4, 5]
    assert max(len(batch) for batch in probe.batches) <= 3


async def test_a_full_queue_of_keys_in_flight_waits_instead_of_spinning(probe_table: Any) -> None:
    # given a batch of two in flight and a spare slot, and then a full batch of the same keys queued:
    # the engine has nothing it may take; it must wait for the flush, not spin without yielding
    hold = asyncio.Event()
    probe = Probe(hold=hold)
    batcher, connections = make(
        probe, concurrency=2, max_batch=2, flush_interval_s=0.005, key=lambda i: i.key
    )
    try:
        first = [asyncio.ensure_future(batcher.submit(Item(key, 1))) for key in ("a", "b")]
        while not probe.batches:
            await asyncio.sleep(0.005)
        second = [asyncio.ensure_future(batcher.submit(Item(key, 2))) for key in ("a", "b")]
        # when the loop gets time while the first batch is held, then it is not starved (a livelock
        # would never let this sleep return)
        await asyncio.wait_for(asyncio.sleep(0.05), 5)
        probe.hold = None
        hold.set()
        results = await asyncio.wait_for(asyncio.gather(*first, *second), 10)
    finally:
        await closing(batcher, connections)
    assert results == [10, 10, 20, 20]
    assert [[item.value for item in batch] for batch in probe.batches] == [[1, 1], [2, 2]]


async def test_a_data_error_replays_the_batch_one_item_at_a_time(probe_table: Any) -> None:
    # given a batch of five calls and some side work, one of whose items the database refuses
    probe = Probe()
    taken: list[Any] = ["touches"]
    batcher, connections = make(probe, side_work=lambda: taken.pop() if taken else None)
    try:
        items = [Item(f"k{index}", value) for index, value in enumerate([1, 2, 0, 4, 5])]
        results = await asyncio.gather(*(batcher.submit(item) for item in items), return_exceptions=True)
        # (the side work is replayed after the calls it rode with have been answered)
        while len(probe.batches) < 7:
            await asyncio.sleep(0.01)
    finally:
        await closing(batcher, connections)
    # then only that call fails, with the caller's "rejected" type naming the error
    assert isinstance(results[2], Refused) and "division by zero" in str(results[2])
    assert [result for index, result in enumerate(results) if index != 2] == [10, 20, 40, 50]
    # and every other item was stored exactly once, each in a transaction of its own, side work last
    assert await database_sync_to_async(stored_rows)() == [("k0", 100), ("k1", 50), ("k3", 25), ("k4", 20)]
    assert [len(batch) for batch in probe.batches] == [5, 1, 1, 1, 1, 1, 0]
    assert probe.side_work == ["touches", "touches"]


async def test_a_lost_connection_fails_the_whole_batch_and_the_next_one_reconnects(probe_table: Any) -> None:
    probe = Probe()
    batcher, connections = make(probe)
    try:
        # given a batch whose connection dies mid-transaction
        results = await asyncio.gather(
            *(batcher.submit(Item(key, value)) for key, value in (("a", 1), ("b", -1), ("c", 3))),
            return_exceptions=True,
        )
        # then every call of it fails with the caller's "unavailable" type, and nothing was written
        assert all(isinstance(result, Down) for result in results)
        assert await database_sync_to_async(stored_rows)() == []
        # and the next batch is served on a new connection
        assert await batcher.submit(Item("d", 4)) == 40
    finally:
        await closing(batcher, connections)


async def test_an_unreachable_database_fails_the_calls_with_the_callers_type(probe_table: Any) -> None:
    batcher, connections = make(Probe(), conninfo=UNREACHABLE)
    try:
        results = await asyncio.gather(
            *(batcher.submit(Item(key, 1)) for key in "abc"), return_exceptions=True
        )
    finally:
        await closing(batcher, connections)
    assert [type(result) for result in results] == [Down, Down, Down]
    assert str(results[0]) == "database unavailable"


async def test_a_store_that_crashes_fails_its_batch_and_the_engine_goes_on(probe_table: Any) -> None:
    calls = 0

    async def store(cur: psycopg.AsyncCursor[Any], items: list[Item], side_work: Any) -> Committed:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("a bug")
        return Committed([item.value for item in items])

    batcher, connections = make(Probe(), store=store)
    try:
        with pytest.raises(Down):
            await batcher.submit(Item("a", 1))
        assert await batcher.submit(Item("a", 2)) == 2
    finally:
        await closing(batcher, connections)


async def test_an_exception_in_the_results_fails_only_that_call(probe_table: Any) -> None:
    async def store(cur: psycopg.AsyncCursor[Any], items: list[Item], side_work: Any) -> Committed:
        return Committed([Refused("not this one") if item.value == 2 else item.value for item in items])

    batcher, connections = make(Probe(), store=store)
    try:
        results = await asyncio.gather(
            *(batcher.submit(Item("k", value)) for value in (1, 2, 3)), return_exceptions=True
        )
    finally:
        await closing(batcher, connections)
    assert results[0] == 1 and results[2] == 3
    assert isinstance(results[1], Refused)


async def test_above_max_pending_calls_are_shed_at_once(probe_table: Any) -> None:
    # given one batch held in flight and two calls queued behind it (max_pending 2)
    hold = asyncio.Event()
    probe = Probe(hold=hold)
    batcher, connections = make(
        probe, max_pending=2, overloaded=lambda: Down("overloaded", retry_after_s=2.0), key=lambda i: i.key
    )
    try:
        first = asyncio.ensure_future(batcher.submit(Item("a", 1)))
        while not probe.batches:
            await asyncio.sleep(0.005)
        queued = [asyncio.ensure_future(batcher.submit(Item("a", value))) for value in (2, 3)]
        await asyncio.sleep(0.01)
        # when one more arrives, then it is refused at once with the retry-after of "overloaded"
        with pytest.raises(Down) as refused:
            await batcher.submit(Item("b", 4))
        assert refused.value.retry_after_s == 2.0
        probe.hold = None
        hold.set()
        assert await asyncio.wait_for(asyncio.gather(first, *queued), 10) == [10, 20, 30]
    finally:
        await closing(batcher, connections)


async def test_after_commit_work_runs_once_committed_and_its_failure_is_contained(probe_table: Any) -> None:
    ran: list[str] = []

    async def store(cur: psycopg.AsyncCursor[Any], items: list[Item], side_work: Any) -> Committed:
        async def after() -> None:
            ran.append(items[0].key)
            raise RuntimeError("a broadcast failed")

        return Committed([True] * len(items), after)

    batcher, connections = make(Probe(), store=store)
    try:
        assert await batcher.submit(Item("a", 1)) is True
        assert await batcher.submit(Item("b", 1)) is True
        await asyncio.sleep(0.05)
    finally:
        await closing(batcher, connections)
    assert ran == ["a", "b"]


async def test_close_fails_the_calls_queued_and_in_flight(probe_table: Any) -> None:
    hold = asyncio.Event()
    probe = Probe(hold=hold)
    batcher, connections = make(probe, key=lambda i: i.key)
    inflight = asyncio.ensure_future(batcher.submit(Item("a", 1)))
    while not probe.batches:
        await asyncio.sleep(0.005)
    queued = asyncio.ensure_future(batcher.submit(Item("a", 2)))
    await asyncio.sleep(0.01)
    await closing(batcher, connections)
    for call in (inflight, queued):
        with pytest.raises(Down, match="stopping"):
            await call


async def test_per_loop_gives_one_instance_per_event_loop() -> None:
    class Owner:
        closed = False

        async def close(self) -> None:
            self.closed = True

    owners: PerLoop[Owner] = PerLoop(Owner)
    first = owners.get()
    assert owners.get() is first
    replacement = Owner()
    owners[asyncio.get_running_loop()] = replacement
    assert owners.get() is replacement
    await owners.close()
    assert replacement.closed and owners.get() is not replacement

    def other_loop() -> Owner:
        async def get() -> Owner:
            return owners.get()

        return asyncio.run(get())

    assert await asyncio.to_thread(other_loop) is not owners.get()
