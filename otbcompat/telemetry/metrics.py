"""``POST devices/{id}/service/{sid}/metrics``: every ``graph.provisioning.freq`` seconds (60 by default)
the box posts a plain JSON array of ``{"name", "value", "tags"}``, with no timestamp (stamped on
receipt):

- ``linux_net_bytes``: the raw cumulative ``/proc/net/dev`` byte counter of every interface, per
  ``direction`` (``in``/``out``), tagged with the device (``iface``) and its UCI interface
  (``uci_name``, ``"none"`` when unmapped);
- ``icmp_latency``: the tracker's last RTT (ms) over each tracked WAN;
- ``proc_loadavg_1m``, ``os_mem_free`` (kB).

They become ONE sample of our pipeline, stored by the telemetry writer (``fleet.telemetry.writer``)
into the same partitioned tables as an agent's samples: per WAN, throughput (bits/s) from the counters'
difference with the previous report (kept in Redis; a counter that went back, at a reboot, gives no rate:
0 for that one sample), RTT from ``icmp_latency``, ``up`` left to the link's stored state (its events
move it); for the box, ``load1``, throughput from the tunnel's (``tun0``) counters, and the tunnel's
state as stored (its ``tun0`` events and properties set it), and its free memory (``mem_free_kb``). The
box sends no CPU, total memory (neither in its metrics nor in its properties, whose ``board`` is ``ubus
call system board``: so no ``mem_pct``, free memory alone is not a percentage), uptime, conntrack, loss
or jitter: those stay null.

The writer is asynchronous and per event loop, and /1.0 views are plain Django views running in the
ASGI server's thread pool; so each process runs one writer on an event loop of its own
(``MetricsLoop``), which batches the reports of all its OTB boxes like an agent's frames.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

import redis
from django.core.cache import cache

from fleet.core.choices import WanKind
from fleet.core.models import Box
from fleet.telemetry.models import BoxStatus, WanStatus
from fleet.telemetry.writer import StorageUnavailable, TelemetryRejected, close_writer, get_writer
from otbcompat.models import OtbDevice
from otbcompat.telemetry import fields
from otbcompat.telemetry.links import TUNNEL, is_wan

logger = logging.getLogger(__name__)

MAX_METRICS = 1024
MAX_WANS = 16  # as many as an agent sample carries
RTT_MAX_MS = 600000.0
LOAD_MAX = 1000000.0
# A rate beyond this (1 Tbit/s) is a counter that jumped, not traffic: no rate for that sample.
RATE_MAX_BPS = 10**12
COUNTERS_TTL_S = 24 * 3600
# Leaves a margin under the box's 5 s curl limit.
SUBMIT_TIMEOUT_S = 4.0
# Tries at a sequence number when reports of one box race for it (several processes).
SEQ_ATTEMPTS = 5
# Tracked, but never a WAN (before the properties say which are).
NOT_WANS = frozenset({TUNNEL, "lan", "loopback"})
SESSION_PREFIX = "otb-"


def otb_session_id(device: OtbDevice) -> str:
    """The session id an OTB box's telemetry is stored under: never a box's current agent session, so
    the writer never revives (``box_online``) an OTB box from its reports; its polls make its presence."""
    return f"{SESSION_PREFIX}{device.pk}"


@dataclass(frozen=True)
class _Counter:
    iface: str  # the UCI name when mapped, else the device
    direction: str
    value: int


@dataclass(frozen=True)
class Report:
    """A validated metrics report."""

    counters: list[_Counter]
    latency: dict[str, float]
    load1: float | None
    mem_free_kb: int | None


def _uci_names(tags: dict[str, Any], path: str) -> list[str]:
    # ``uci show network | grep "'eth1'"`` prints one line per section naming the device (a ``device``
    # section and the interface, say): every line is a candidate; "none" is unmapped.
    text = fields.text(tags.get("uci_name"), f"{path}.tags.uci_name", max_len=256)
    return [line.strip()[:32] for line in text.splitlines() if line.strip() and line.strip() != "none"]


class _Naming:
    """The UCI interface a measurement is about, from the box's properties when it posted them: a
    candidate that is one of its WANs, else the interface its properties give the device, else the
    first candidate, else the device itself."""

    def __init__(self, properties: dict[str, Any] | None) -> None:
        properties = properties or {}
        self.wans = set(properties.get("wans") or ())
        self.by_device = {
            item["device"]: item["name"] for item in properties.get("interfaces") or () if item.get("device")
        }

    def name(self, device: str, candidates: list[str]) -> str:
        for candidate in candidates:
            if candidate in self.wans:
                return candidate
        return self.by_device.get(device) or (candidates[0] if candidates else device)


def metrics_parse(body: Any, properties: dict[str, Any] | None = None) -> Report:
    """The report, validated whole (400 naming the first bad field), its measurements named by UCI
    interface (``properties``: the box's last properties document). Unknown metric names are ignored."""
    naming = _Naming(properties)
    items = fields.listing(body, "body", max_items=MAX_METRICS, allow_null=False)
    counters: list[_Counter] = []
    latency: dict[str, float] = {}
    load1 = None
    mem_free = None
    for index, raw in enumerate(items):
        path = f"[{index}]"
        item = fields.mapping(raw, path)
        name = fields.text(item.get("name"), f"{path}.name", max_len=64, required=True)
        tags = item.get("tags")
        tags = {} if tags is None else fields.mapping(tags, f"{path}.tags")
        value = item.get("value")
        if name == "linux_net_bytes":
            direction = tags.get("direction")
            if direction not in ("in", "out"):
                raise fields.bad(f"{path}.tags.direction", 'must be "in" or "out"')
            device = fields.text(tags.get("iface"), f"{path}.tags.iface", max_len=32, required=True).strip()
            iface = naming.name(device, _uci_names(tags, path))
            counter = fields.integer(value, f"{path}.value", minimum=0, maximum=fields.COUNTER_MAX)
            counters.append(_Counter(iface, direction, counter))
        elif name == "icmp_latency":
            device = fields.text(tags.get("iface"), f"{path}.tags.iface", max_len=32).strip()
            iface = naming.name(device, _uci_names(tags, path))
            rtt = fields.number(value, f"{path}.value", minimum=0, maximum=RTT_MAX_MS)
            if iface:
                latency[iface] = rtt
        elif name == "proc_loadavg_1m":
            load1 = fields.number(value, f"{path}.value", minimum=0, maximum=LOAD_MAX)
        elif name == "os_mem_free":
            mem_free = fields.integer(value, f"{path}.value", minimum=0, maximum=fields.BIGINT_MAX)
    return Report(counters, latency, load1, mem_free)


def _counters_key(box_id: Any) -> str:
    return f"otbcompat:counters:{box_id}"


def counter_rates(
    box_id: Any, counters: list[_Counter], received: float
) -> dict[tuple[str, str], int | None]:
    """Bits/s per (iface, direction) since the previous report of the same counter (kept in Redis for a
    day); None for a counter seen for the first time, gone back (reboot, wrap), or absurd. Redis being
    unreachable gives no rates, never a refused report."""
    rates: dict[tuple[str, str], int | None] = {}
    key = _counters_key(box_id)
    try:
        client = cache._cache.get_client(write=True)  # type: ignore[attr-defined]
        previous = client.hgetall(key)
        pipe = client.pipeline(transaction=False)
        pipe.hset(key, mapping={f"{c.iface}|{c.direction}": f"{c.value} {received:.6f}" for c in counters})
        pipe.expire(key, COUNTERS_TTL_S)
        pipe.execute()
    except redis.RedisError:
        logger.warning("metrics counters of box %s: Redis unavailable, no rates", box_id, exc_info=True)
        return {(c.iface, c.direction): None for c in counters}
    for counter in counters:
        rate = None
        stored = previous.get(f"{counter.iface}|{counter.direction}".encode())
        if stored:
            try:
                value_text, at_text = stored.decode().split()
                before, at = int(value_text), float(at_text)
            except ValueError:
                before, at = -1, received
            elapsed = received - at
            if 0 <= before <= counter.value and elapsed >= 1:
                rate = round((counter.value - before) * 8 / elapsed)
                if rate > RATE_MAX_BPS:
                    rate = None
        rates[(counter.iface, counter.direction)] = rate
    return rates


def metrics_sample(*, device: OtbDevice, box: Box, report: Report, received: float) -> dict[str, Any]:
    """The report as one sample of our telemetry protocol's shape (``fleet.telemetry.writer``)."""
    rates = counter_rates(box.pk, report.counters, received)
    wan_names = device.properties.get("wans")
    seen = dict.fromkeys(counter.iface for counter in report.counters)
    wans = sorted(
        name
        for name in dict.fromkeys([*seen, *report.latency])
        if is_wan(name, wan_names) or (wan_names is None and name in report.latency and name not in NOT_WANS)
    )[:MAX_WANS]
    rows = {link.iface: link for link in WanStatus.objects.filter(box=box, iface__in=wans)}
    readings = []
    for name in wans:
        link = rows.get(name)
        readings.append(
            {
                "iface": name,
                "label": link.label if link else name,
                "kind": link.kind if link else WanKind.OTHER,
                "up": None,  # the stored state: the box's ifup/ifdown events move it
                "rtt_ms": report.latency.get(name),
                "jitter_ms": None,
                "loss_pct": None,
                "rx_bps": rates.get((name, "in")) or 0,
                "tx_bps": rates.get((name, "out")) or 0,
                "public_ip": link.public_ip if link else None,
                "subflows": 0,
            }
        )
    return {
        "ts": received,
        "cpu_pct": None,
        "mem_pct": None,  # no total memory anywhere in what the box sends: no percentage
        "mem_free_kb": report.mem_free_kb,
        "load1": report.load1,
        "uptime_s": None,
        "tunnel_up": None,  # the stored state: the box's tun0 events and properties set it
        "conntrack": None,
        "rx_bps": rates.get((TUNNEL, "in")),
        "tx_bps": rates.get((TUNNEL, "out")),
        "wans": readings,
    }


class MetricsLoop:
    """One event loop per process, on a daemon thread started on first use, running the telemetry
    writer for the /1.0 views (which run in threads)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None or self._thread is None or not self._thread.is_alive():
                loop = asyncio.new_event_loop()
                thread = threading.Thread(target=loop.run_forever, name="otb-metrics-writer", daemon=True)
                thread.start()
                self._loop, self._thread = loop, thread
            return self._loop

    def store(self, **message: Any) -> bool:
        """Submit one message to this process's writer and wait for its commit (True), or its refusal
        as a duplicate (False). Raises StorageUnavailable (also after SUBMIT_TIMEOUT_S) or
        TelemetryRejected."""

        async def submit() -> bool:
            return await get_writer().submit(**message)

        future = asyncio.run_coroutine_threadsafe(submit(), self._running_loop())
        try:
            return future.result(timeout=SUBMIT_TIMEOUT_S)
        except concurrent.futures.TimeoutError as exc:
            future.cancel()
            raise StorageUnavailable("the telemetry writer did not answer in time") from exc

    def stop(self) -> None:
        """Close the writer and end the loop's thread (tests; a server process just exits)."""
        with self._lock:
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
        if loop is None or thread is None:
            return
        if thread.is_alive():
            asyncio.run_coroutine_threadsafe(close_writer(), loop).result(timeout=10)
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=10)
        loop.close()


metrics_loop = MetricsLoop()


def metrics_report(
    *, device: OtbDevice, box: Box, body: Any, received: float | None = None
) -> dict[str, Any]:
    """Validate the report whole, derive its sample and store it through the telemetry writer. Its
    sequence number is the box's next one (``BoxStatus.last_seq`` + 1: the box has none of its own, and
    small consecutive numbers keep the box's sequence as an agent's would be); a report that met
    another one of the same box taking that number is given the next. Returns the sample stored."""
    received = received if received is not None else time.time()
    report = metrics_parse(body, device.properties)
    sample = metrics_sample(device=device, box=box, report=report, received=received)
    message = {
        "box_id": box.pk,
        "organization_id": box.organization_id,
        "session_id": otb_session_id(device),
        "samples": [sample],
    }
    for _ in range(SEQ_ATTEMPTS):
        last_seq = BoxStatus.objects.filter(box_id=box.pk).values_list("last_seq", flat=True).first() or 0
        if metrics_loop.store(seq=last_seq + 1, **message):
            return sample
    raise TelemetryRejected("the report could not be given a sequence number")


__all__ = ["StorageUnavailable", "TelemetryRejected", "metrics_loop", "metrics_report", "otb_session_id"]
