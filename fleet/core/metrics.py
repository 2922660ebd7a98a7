"""Prometheus metrics of one process (``prometheus_client``), exposed at ``/metrics``.

Every process (each uvicorn process, each Celery worker) counts what it does itself in this
registry. The web processes' ``/metrics`` adds what no single process counts: Celery task counts and
durations (recorded by the workers in Redis, see ``fleet.core.task_metrics``), queue lengths and the
fleet's business gauges (``config.metrics``). docs/operations.md lists every metric."""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
)

disable_created_metrics()  # no *_created series: they double the series count for nothing we use
REGISTRY = CollectorRegistry(auto_describe=True)
ProcessCollector(registry=REGISTRY)  # process_cpu_seconds_total, process_resident_memory_bytes, fds

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_BATCH_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)

# -- agent sessions -------------------------------------------------------------------------------
AGENT_SESSIONS = Gauge("otb_agent_sessions", "Live agent sessions held by this process", registry=REGISTRY)
AGENT_SESSIONS_OPENED = Counter(
    "otb_agent_sessions_opened", "Agent sessions accepted (token valid, not refused)", registry=REGISTRY
)
AGENT_SESSIONS_CLOSED = Counter(
    "otb_agent_sessions_closed",
    "Agent sessions ended, by websocket close code (4002: replaced by a newer session of the box)",
    ["code"],
    registry=REGISTRY,
)
AGENT_SESSIONS_REFUSED = Counter(
    "otb_agent_sessions_refused",
    "Agent sessions refused at connect, by reason (unauthorized, overloaded, unavailable, rate_limited)",
    ["reason"],
    registry=REGISTRY,
)
AGENT_FRAMES_INVALID = Counter(
    "otb_agent_frames_invalid",
    "Agent frames answered with an error frame, by error code",
    ["code"],
    registry=REGISTRY,
)

# -- telemetry ------------------------------------------------------------------------------------
TELEMETRY_RECEIVED = Counter(
    "otb_telemetry_messages_received", "Telemetry messages received from agents", registry=REGISTRY
)
TELEMETRY_ACKED = Counter(
    "otb_telemetry_messages_acked", "Telemetry messages acknowledged (stored durably)", registry=REGISTRY
)
TELEMETRY_REJECTED = Counter(
    "otb_telemetry_messages_rejected",
    "Telemetry messages not acknowledged, by reason (storage_unavailable, rejected)",
    ["reason"],
    registry=REGISTRY,
)
TELEMETRY_ACK_SECONDS = Histogram(
    "otb_telemetry_ack_seconds",
    "Time from a telemetry message's receipt to its ack (queue, batch, commit)",
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)

# -- batching engine (telemetry writer, session gate) ----------------------------------------------
BATCH_SIZE = Histogram(
    "otb_batcher_batch_size", "Items per committed batch, by batcher", ["batcher"], buckets=_BATCH_BUCKETS,
    registry=REGISTRY,
)  # fmt: skip
BATCH_FLUSH_SECONDS = Histogram(
    "otb_batcher_flush_seconds",
    "Time to store and commit one batch, by batcher",
    ["batcher"],
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
BATCH_FAILED = Counter(
    "otb_batcher_failed",
    "Batches that failed, by batcher and reason (unavailable, rejected)",
    ["batcher", "reason"],
    registry=REGISTRY,
)

# -- HTTP -----------------------------------------------------------------------------------------
OTB_TODO_POLLS = Counter(
    "otb_compat_todo_polls",
    "Polls of /1.0/devices/{id}/actions/todo seen by the fast path, by how they were answered: "
    "cache (the idle answer kept in memory), early (the same, answered in the HTTP parser: "
    "otbcompat.http), query (idle, after one query), paced (wait: database unavailable), "
    "django (anything else)",
    ["answer"],
    registry=REGISTRY,
)
HTTP_REQUESTS = Counter(
    "otb_http_requests",
    "HTTP requests answered, by route (the URL pattern, not the path), method and status",
    ["route", "method", "status"],
    registry=REGISTRY,
)
HTTP_SECONDS = Histogram(
    "otb_http_request_seconds",
    "HTTP request duration, by route and method",
    ["route", "method"],
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
