"""The batching engine of the live paths (the telemetry writer, the session gate).

Callers ``await batcher.submit(item)``; the engine gathers the items of every session of the event
loop into batches and hands each batch to the user's ``store(cursor, items, side_work)``, run inside
ONE transaction on one of the loop's own psycopg connections (:class:`LiveConnections`: no ORM, no
thread hop). Its contract:

- a call's future resolves only AFTER the commit, with the result ``store`` gave for that item (an
  exception instance in the results fails that one call);
- a lost or unreachable database fails every call of the batch with the user's ``unavailable``
  exception; nothing of the batch is written;
- a data error (any other ``psycopg.Error``) poisons the whole transaction: the batch is replayed one
  item per transaction, so only the bad item fails (with the user's ``rejected`` exception);
- with a ``key``, the items of one key are never in two batches in flight at once, so they commit in
  the order they were submitted (the writer's per-box seq order) while up to ``concurrency`` batches
  of other keys are stored concurrently;
- above ``max_pending`` queued items a call fails at once with ``overloaded`` (load shedding).

A batch is formed as soon as a flush slot is free: under light load a call is served at once, under a
storm the batches grow by themselves (everything that arrived meanwhile, up to ``max_batch``); a
``flush_interval_s`` lets a batch fill for at most that long first. ``side_work`` is taken with each
batch and stored in the same transaction (the writer's heartbeat touches). What must follow a commit
(broadcasts to people) is returned as ``Committed.after`` and runs in the background.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
import weakref
from collections.abc import Awaitable, Callable, Hashable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

import psycopg
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from fleet.core.live_connections import DISCONNECTED, LiveConnections
from fleet.core.metrics import BATCH_FAILED, BATCH_FLUSH_SECONDS, BATCH_SIZE, REGISTRY

logger = logging.getLogger(__name__)

Item = TypeVar("Item")


@dataclass(slots=True)
class Committed:
    """What ``store`` hands back for a batch it stored: one result per item, in the batch's order (an
    exception instance fails that item's call), and what to run once the batch is committed."""

    results: Sequence[Any]
    after: Callable[[], Awaitable[None]] | None = None


Store = Callable[[psycopg.AsyncCursor[Any], list[Item], Any], Awaitable[Committed]]


@dataclass(slots=True)
class _Call(Generic[Item]):
    item: Item
    future: asyncio.Future[Any] = field(repr=False)


class Batcher(Generic[Item]):
    """One queue of calls of one kind, stored in batches (see the module docstring for the contract)."""

    def __init__(
        self,
        *,
        name: str,
        connections: LiveConnections,
        store: Store[Item],
        unavailable: Callable[[str], Exception],
        rejected: Callable[[psycopg.Error], Exception],
        max_batch: int,
        flush_interval_s: float = 0.0,
        concurrency: int = 1,
        key: Callable[[Item], Hashable] | None = None,
        max_pending: int | None = None,
        overloaded: Callable[[], Exception] | None = None,
        side_work: Callable[[], Any] | None = None,
        timings: dict[str, float] | None = None,
    ) -> None:
        if max_pending is not None and overloaded is None:
            raise ValueError("max_pending needs an overloaded exception")
        self.name = name
        self.connections = connections
        self.store = store
        self.unavailable = unavailable
        self.rejected = rejected
        self.max_batch = max_batch
        self.flush_interval_s = flush_interval_s
        self.concurrency = concurrency
        self.key = key
        self.max_pending = max_pending
        self.overloaded = overloaded
        self.side_work = side_work
        # Counts of committed batches and items; seconds spent committing (``store`` adds its phases).
        self.stats: collections.Counter[str] = collections.Counter()
        self.timings: dict[str, float] = timings if timings is not None else collections.defaultdict(float)
        self._queue: list[_Call[Item]] = []
        self._wake = asyncio.Event()
        self._full = asyncio.Event()
        self._slot = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._flushing = 0
        self._inflight_keys: set[Hashable] = set()
        self._flushes: dict[asyncio.Task[None], list[_Call[Item]]] = {}
        self._background: set[asyncio.Task[None]] = set()
        self._size = BATCH_SIZE.labels(name)
        self._flush_seconds = BATCH_FLUSH_SECONDS.labels(name)
        _BATCHERS.add(self)

    # -- the caller's side -----------------------------------------------------------------------
    @property
    def pending(self) -> int:
        """Calls queued and not yet taken into a batch."""
        return len(self._queue)

    async def submit(self, item: Item) -> Any:
        """Queue ``item`` and wait until its batch is committed; returns what ``store`` said for it.
        Raises the user's ``overloaded``, ``unavailable`` or ``rejected`` exception (or the exception
        ``store`` put in this item's result)."""
        if self.max_pending is not None and len(self._queue) >= self.max_pending:
            assert self.overloaded is not None
            raise self.overloaded()
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.append(_Call(item, future))
        self.wake()
        if len(self._queue) >= self.max_batch:
            self._full.set()
        return await future

    def wake(self) -> None:
        """Form a batch soon (there are calls or side work waiting)."""
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name=self.name)
        self._wake.set()

    async def close(self) -> None:
        """Stop: the calls queued or in flight fail with ``unavailable``; the connections are their
        owner's to close."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None
        inflight = [call for calls in self._flushes.values() for call in calls]
        tasks = list(self._flushes) + list(self._background)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=5)
        stopping = self.unavailable("the server is stopping")
        _fail(inflight, stopping)
        _fail(self._queue, stopping)
        self._queue = []

    # -- the loop --------------------------------------------------------------------------------
    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            while self._flushing >= self.concurrency:
                self._slot.clear()
                await self._slot.wait()
            if self.flush_interval_s > 0 and len(self._queue) < self.max_batch:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._full.wait(), self.flush_interval_s)
            self._wake.clear()
            self._full.clear()
            batch = self._take()
            side_work = self.side_work() if self.side_work is not None else None
            if not batch and side_work is None:
                # Everything queued belongs to keys being flushed: wait for a flush to finish. (Looping
                # instead never yielded when the queue was full, since set events return at once, so
                # the flush in flight could not progress: a livelock at 100 % CPU under load.)
                if self._flushing > 0:
                    self._slot.clear()
                    await self._slot.wait()
                continue
            keys = {self.key(call.item) for call in batch} if self.key is not None else set()
            self._flushing += 1
            self._inflight_keys |= keys
            task = asyncio.get_running_loop().create_task(self._flush_guarded(batch, side_work, keys))
            self._flushes[task] = batch

    def _take(self) -> list[_Call[Item]]:
        """Up to max_batch queued calls in their order, skipping (keeping) those of keys in flight."""
        if not self._inflight_keys or self.key is None:
            batch, self._queue = self._queue[: self.max_batch], self._queue[self.max_batch :]
        else:
            key, busy = self.key, self._inflight_keys
            batch, rest = [], []
            for call in self._queue:
                if len(batch) < self.max_batch and key(call.item) not in busy:
                    batch.append(call)
                else:
                    rest.append(call)
            self._queue = rest
        if self._queue:
            self._wake.set()
            if len(self._queue) >= self.max_batch:
                self._full.set()
        return batch

    async def _flush_guarded(self, batch: list[_Call[Item]], side_work: Any, keys: set[Hashable]) -> None:
        try:
            await self._flush(batch, side_work)
        except Exception:  # the engine must survive anything; its callers get an error
            logger.exception("%s: a batch of %d crashed", self.name, len(batch))
            _fail(batch, self.unavailable(f"{self.name} failed"))
        finally:
            self._flushes.pop(asyncio.current_task(), None)  # type: ignore[arg-type]
            self._flushing -= 1
            self._inflight_keys -= keys
            self._slot.set()
            if self._queue:
                self._wake.set()

    async def _flush(self, batch: list[_Call[Item]], side_work: Any) -> None:
        """Store the batch in one transaction, then resolve its calls. A lost connection fails the
        batch; a data error replays it one item per transaction (side work last, on its own)."""
        try:
            conn = await self.connections.acquire()
        except (*DISCONNECTED, psycopg.Error) as exc:
            logger.warning("%s: database unavailable: %s", self.name, exc)
            BATCH_FAILED.labels(self.name, "unavailable").inc()
            _fail(batch, self.unavailable("database unavailable"))
            return
        started = time.perf_counter()
        try:
            async with conn.transaction(), conn.cursor() as cur:
                committed = await self.store(cur, [call.item for call in batch], side_work)
                stored = time.perf_counter()
        except DISCONNECTED as exc:
            logger.warning("%s: database connection lost: %s", self.name, exc)
            BATCH_FAILED.labels(self.name, "unavailable").inc()
            await self.connections.discard(conn)
            _fail(batch, self.unavailable("database connection lost"))
            return
        except psycopg.Error as exc:
            self.connections.release(conn)
            if len(batch) + (side_work is not None) <= 1:
                logger.warning("%s: refused by the database: %s", self.name, exc)
                BATCH_FAILED.labels(self.name, "rejected").inc()
                _fail(batch, self.rejected(exc))
                return
            # A data error poisons the whole transaction: one item at a time, so that only the bad
            # one is refused and every other session keeps flowing.
            for call in batch:
                await self._flush([call], None)
            if side_work is not None:
                await self._flush([], side_work)
            return
        except Exception:
            self.connections.release(conn)  # rolled back; a broken one is dropped by release()
            raise
        self.timings["commit"] = self.timings.get("commit", 0.0) + time.perf_counter() - stored
        self.connections.release(conn)
        self.stats["batches"] += 1
        self.stats["items"] += len(batch)
        self._size.observe(len(batch))
        self._flush_seconds.observe(time.perf_counter() - started)
        for call, result in zip(batch, committed.results, strict=True):
            if call.future.done():  # the caller went away
                continue
            if isinstance(result, BaseException):
                call.future.set_exception(result)
            else:
                call.future.set_result(result)
        if committed.after is not None:
            self._spawn(committed.after(), "after-commit work")

    def _spawn(self, work: Awaitable[None], what: str) -> None:
        async def guarded() -> None:
            try:
                await work
            except Exception:  # committed already: a failed broadcast never fails the batch
                logger.exception("%s: %s failed", self.name, what)

        task = asyncio.get_running_loop().create_task(guarded())
        self._background.add(task)
        task.add_done_callback(self._background.discard)


def _fail(calls: list[_Call[Any]], exc: Exception) -> None:
    for call in calls:
        if not call.future.done():
            call.future.set_exception(exc)


class Closeable(Protocol):
    async def close(self) -> None: ...


Owner = TypeVar("Owner", bound=Closeable)


class PerLoop(Generic[Owner]):
    """One instance per running event loop, made on first use: one per process in production (one
    loop), one per test (each test has its own loop, and a loop's connections cannot serve another)."""

    def __init__(self, factory: Callable[[], Owner]) -> None:
        self.factory = factory
        self._instances: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Owner] = (
            weakref.WeakKeyDictionary()
        )

    def get(self) -> Owner:
        loop = asyncio.get_running_loop()
        instance = self._instances.get(loop)
        if instance is None:
            instance = self._instances[loop] = self.factory()
        return instance

    def __setitem__(self, loop: asyncio.AbstractEventLoop, instance: Owner) -> None:
        """Install a configured instance for ``loop`` (tests: one that cannot reach the database)."""
        self._instances[loop] = instance

    async def close(self) -> None:
        """Close and forget the running loop's instance, if any."""
        instance = self._instances.pop(asyncio.get_running_loop(), None)
        if instance is not None:
            await instance.close()


# Every live batcher of this process, for the queue-depth gauge (summed by name at scrape time).
_BATCHERS: weakref.WeakSet[Batcher[Any]] = weakref.WeakSet()


class _PendingCollector(Collector):
    """``otb_batcher_pending``: the queue depth of every live batcher of this process, by name."""

    def describe(self) -> Iterator[Any]:
        yield GaugeMetricFamily("otb_batcher_pending", "Calls queued, by batcher", labels=["batcher"])

    def collect(self) -> Iterator[Any]:
        totals: collections.Counter[str] = collections.Counter()
        for batcher in list(_BATCHERS):
            totals[batcher.name] += batcher.pending
        gauge = GaugeMetricFamily(
            "otb_batcher_pending",
            "Calls queued and not yet taken into a batch, by batcher",
            labels=["batcher"],
        )
        for name, value in sorted(totals.items()):
            gauge.add_metric([name], value)
        yield gauge


REGISTRY.register(_PendingCollector())
