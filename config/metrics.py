"""``/metrics``: this process's Prometheus metrics (``fleet.core.metrics``) plus what no single process
counts: Celery tasks (recorded by the workers in Redis), queue lengths, the database pool, and the
fleet's business gauges. Scrape every web process directly (127.0.0.1:8001/metrics, :8002, ...):
nginx does not serve it (deploy/nginx/otb-fleet.conf).

Access: with ``OTB_METRICS_TOKEN`` set, ``Authorization: Bearer <token>``; without it, requests from
the loopback address only (a local Prometheus or its agent)."""

from __future__ import annotations

import hmac
import ipaddress
import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

import redis
from django.conf import settings
from django.db import connections
from django.db.models import Count
from django.http import HttpRequest, HttpResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

import fleet.core.batching  # noqa: F401 (registers the batchers' queue-depth gauge, whatever imported first)
from fleet.core.choices import BoxState
from fleet.core.metrics import REGISTRY
from fleet.core.models import Box
from fleet.core.task_metrics import BUCKETS, task_metrics_read
from fleet.firmware.models import Rollout
from fleet.monitoring.models import Alert
from fleet.telemetry.models import BoxStatus

logger = logging.getLogger(__name__)

CELERY_QUEUES = ("default", "telemetry", "rollouts")
BUSINESS_CACHE_S = 10.0


class BusinessCollector(Collector):
    """Boxes online and offline, rollouts by state, alerts firing: counted in PostgreSQL at most
    every 10 s per process, whatever the scrape rate."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._at = 0.0
        self._values: dict[str, Any] = {}

    def _read(self) -> dict[str, Any]:
        with self._lock:
            if time.monotonic() - self._at > BUSINESS_CACHE_S:
                claimed = Box.objects.filter(state=BoxState.CLAIMED)
                online = BoxStatus.objects.filter(box__state=BoxState.CLAIMED, online=True).count()
                self._values = {
                    "online": online,
                    "offline": claimed.count() - online,
                    "rollouts": dict(Rollout.objects.values_list("state").annotate(n=Count("id"))),
                    "alerts": Alert.objects.filter(state="firing").count(),
                }
                self._at = time.monotonic()
            return self._values

    def describe(self) -> Iterator[Any]:
        """What it exposes, without a query (the registry asks at import time)."""
        yield GaugeMetricFamily("otb_boxes", "Claimed boxes, by presence", labels=["presence"])
        yield GaugeMetricFamily("otb_rollouts", "Rollouts, by state", labels=["state"])
        yield GaugeMetricFamily("otb_alerts_firing", "Alerts firing now")

    def collect(self) -> Iterator[Any]:
        try:
            values = self._read()
        except Exception:  # a scrape must answer even with the database down
            logger.warning("business metrics unavailable", exc_info=True)
            return
        boxes = GaugeMetricFamily("otb_boxes", "Claimed boxes, by presence", labels=["presence"])
        boxes.add_metric(["online"], values["online"])
        boxes.add_metric(["offline"], values["offline"])
        yield boxes
        rollouts = GaugeMetricFamily("otb_rollouts", "Rollouts, by state", labels=["state"])
        for state in ("draft", "scheduled", "running", "paused", "completed", "aborted"):
            rollouts.add_metric([state], values["rollouts"].get(state, 0))
        yield rollouts
        yield GaugeMetricFamily("otb_alerts_firing", "Alerts firing now", value=values["alerts"])


class CeleryCollector(Collector):
    """Queue lengths (Redis lists of the broker) and task counts and durations (``task_metrics``)."""

    def describe(self) -> Iterator[Any]:
        yield GaugeMetricFamily(
            "otb_celery_queue_length", "Tasks waiting in a Celery queue", labels=["queue"]
        )
        yield CounterMetricFamily("otb_celery_tasks", "Celery tasks finished", labels=["task", "outcome"])
        yield HistogramMetricFamily("otb_celery_task_seconds", "Celery task durations", labels=["task"])

    def collect(self) -> Iterator[Any]:
        try:
            client = redis.Redis.from_url(
                settings.CELERY_BROKER_URL, socket_timeout=1, socket_connect_timeout=1
            )
            try:
                lengths = {queue: client.llen(queue) for queue in CELERY_QUEUES}
            finally:
                client.close()
            tasks = task_metrics_read()
        except redis.RedisError:
            logger.warning("celery metrics unavailable", exc_info=True)
            return
        queue = GaugeMetricFamily(
            "otb_celery_queue_length", "Tasks waiting in a Celery queue", labels=["queue"]
        )
        for name, length in lengths.items():
            queue.add_metric([name], length)
        yield queue
        counts = CounterMetricFamily(
            "otb_celery_tasks", "Celery tasks finished, by task and outcome", labels=["task", "outcome"]
        )
        for (task, outcome), value in sorted(tasks["count"].items()):
            counts.add_metric([task, outcome], value)
        yield counts
        durations = HistogramMetricFamily(
            "otb_celery_task_seconds", "Celery task durations, by task", labels=["task"]
        )
        for task in sorted(tasks["n"]):
            buckets = [(str(bound), tasks["le"].get((task, bound), 0)) for bound in BUCKETS]
            buckets.append(("+Inf", tasks["n"][task]))
            durations.add_metric([task], buckets, tasks["sum"].get(task, 0.0))
        yield durations


class DatabasePoolCollector(Collector):
    """The psycopg pool of this process, when one is configured (DATABASE_POOL_MAX_SIZE > 0)."""

    def describe(self) -> Iterator[Any]:
        return iter(())

    def collect(self) -> Iterator[Any]:
        pool = getattr(connections["default"], "pool", None)
        if pool is None:
            return
        stats = pool.get_stats()
        for key, help_text in (
            ("pool_size", "Connections in the pool"),
            ("pool_available", "Idle connections in the pool"),
            ("requests_waiting", "Requests waiting for a connection"),
        ):
            yield GaugeMetricFamily(f"otb_db_{key}", help_text, value=stats.get(key, 0))


BUSINESS = BusinessCollector()
REGISTRY.register(BUSINESS)
REGISTRY.register(CeleryCollector())
REGISTRY.register(DatabasePoolCollector())


def _allowed(request: HttpRequest) -> bool:
    token = str(settings.OTB.get("METRICS_TOKEN") or "")
    if token:
        given = request.headers.get("Authorization", "")
        return hmac.compare_digest(given.encode(), f"Bearer {token}".encode())
    try:
        return ipaddress.ip_address(request.META.get("REMOTE_ADDR", "")).is_loopback
    except ValueError:
        return False


def metrics_view(request: HttpRequest) -> HttpResponse:
    if not _allowed(request):
        return HttpResponse("metrics: a bearer token or a loopback address is required\n", status=403)
    return HttpResponse(generate_latest(REGISTRY), content_type=CONTENT_TYPE_LATEST)
