"""The telemetry pump: a sample every interval into the queue, the queue out oldest first.

Sampling goes on whether or not a session is up (the queue is bounded, see :mod:`otb_agent.store`).
While the server has welcomed the session, queued messages are sent in seq order, at most
:data:`WINDOW` of them unacknowledged; each ``ack`` removes its message and lets the next one go.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Dict, Optional, Set

import otb_protocol

from .channel import Channel
from .collectors import Collector
from .reporting import Reporter
from .store import Store
from .system import Spawn

WINDOW = 32  # max unacked telemetry frames in flight
DEFAULT_TELEMETRY_INTERVAL = 10.0


class TelemetryPump:
    """Collects, queues and sends one box's telemetry; ``interval_override`` (seconds) wins over
    the interval the server asks for; the first sample is taken ``first_tick_delay`` seconds after
    start (the simulator spreads its boxes' samples over the interval)."""

    def __init__(
        self,
        *,
        collector: Collector,
        store: Store,
        channel: Channel,
        reporter: Reporter,
        spawn: Spawn,
        interval_override: Optional[float] = None,
        first_tick_delay: Optional[float] = None,
    ) -> None:
        self.collector = collector
        self.store = store
        self.channel = channel
        self.reporter = reporter
        self.spawn = spawn
        self.interval_override = interval_override
        self.interval = interval_override or DEFAULT_TELEMETRY_INTERVAL
        self.next_collect = time.monotonic() + (first_tick_delay if first_tick_delay is not None else 0.0)
        self.last_acked_seq = 0
        self._inflight: Set[int] = set()
        self._sent_upto = 0
        self._pumping = False
        self._pump_again = False
        self._collecting = False

    def use_server_interval(self, seconds: float) -> None:
        """Sample every ``seconds`` as the server asks (welcome, config), unless overridden."""
        if self.interval_override is None:
            self.interval = seconds

    def restart_clock(self) -> None:
        """Take the next sample one interval from now (after a simulated reboot)."""
        self.next_collect = time.monotonic() + self.interval

    def status_counts(self) -> Dict[str, Any]:
        """The queue's figures for ``status.json``."""
        return {
            "buffer_depth": self.store.depth(),
            "dropped_total": self.store.dropped_total,
            "last_acked_seq": self.last_acked_seq,
        }

    # -- the session's events
    def session_started(self) -> None:
        """A new connection: nothing is in flight on it yet."""
        self._inflight = set()
        self._sent_upto = 0

    def welcomed(self, last_acked_seq: int) -> int:
        """The server has everything up to ``last_acked_seq``: drop it from the queue (how many).

        A watermark at or beyond anything this store ever numbered means our counter was reset (state
        lost, a new disk, a memory store after a restart): what is queued was never sent, so it is
        numbered after the watermark instead of being taken as acknowledged."""
        if last_acked_seq >= self.store.next_seq() and self.store.depth():
            renumbered = self.store.renumber_after(last_acked_seq)
            self.reporter.log.warning(
                "telemetry_renumbered",
                server_last_seq=last_acked_seq,
                renumbered=renumbered,
            )
        removed = self.store.ack_upto(last_acked_seq)
        self.last_acked_seq = max(self.last_acked_seq, last_acked_seq)
        return removed

    async def on_ack(self, seq: int) -> None:
        if self.store.ack(seq):
            self.reporter.stats.acked += 1
        self._inflight.discard(seq)
        if seq > self.last_acked_seq:
            self.last_acked_seq = seq
        self.reporter.status_update(**self.status_counts())
        await self.pump()

    # -- sampling
    async def tick(self, now: float) -> None:
        """Take the sample that is due (a blocking collector in a thread) and send what is queued."""
        interval = self.interval
        self.next_collect += interval
        if self.next_collect <= now:
            self.next_collect = now + interval
        if self.collector.blocking:
            if not self._collecting:
                self._collecting = True
                self.spawn(self._collect_blocking())
            return
        self._enqueue(self.collector.collect())
        await self.pump()

    async def _collect_blocking(self) -> None:
        try:
            sample = await asyncio.to_thread(self.collector.collect)
            self._enqueue(sample)
        except Exception as e:
            self.reporter.error("collect_failed", repr(e))
        finally:
            self._collecting = False
        await self.pump()

    def _enqueue(self, sample: Dict[str, Any]) -> None:
        try:
            otb_protocol.validate_message({"type": "telemetry", "seq": 1, "samples": [sample]})
        except otb_protocol.ProtocolError as e:
            self.reporter.error("invalid_sample", str(e), level="error", field=e.field_path)
            return
        self.store.append([sample])
        self.reporter.status_update(**self.status_counts())

    # -- sending
    async def pump(self) -> None:
        """Send queued telemetry, oldest first, keeping at most WINDOW frames unacked."""
        if self._pumping:
            self._pump_again = True
            return
        self._pumping = True
        try:
            while True:
                self._pump_again = False
                if not self.channel.welcomed:
                    return
                room = WINDOW - len(self._inflight)
                if room <= 0:
                    return
                batch = self.store.pending(self._sent_upto, room)
                for seq, text in batch:
                    if not await self.channel.send_text(text):
                        return  # the session loop notices the closed connection
                    self._inflight.add(seq)
                    self._sent_upto = seq
                    self.reporter.stats.sent += 1
                if not self._pump_again and len(batch) < room:
                    return
                if not batch:
                    return
        finally:
            self._pumping = False
