"""Celery task counts and durations, recorded by every worker in Redis and read by the web processes'
``/metrics``: a worker's own registry would need a scrape target per worker and per pool process, and
would lose its counts on every restart. Each finished task adds to a few hash fields (one
round trip, pipelined); the exposition is a counter per (task, outcome) and a duration histogram per
task, cumulative across workers and restarts."""

from __future__ import annotations

import logging
import time
from typing import Any

import redis
from celery.signals import task_postrun, task_prerun, task_retry
from django.conf import settings

logger = logging.getLogger(__name__)

KEY = "otb:metrics:celery"
BUCKETS = (0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0)
_started: dict[str, float] = {}
_client: redis.Redis | None = None


def _redis() -> redis.Redis:
    global _client
    if _client is None:
        _client = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=1, socket_connect_timeout=1)
    return _client


def task_record(name: str, outcome: str, seconds: float | None) -> None:
    """Add one finished task (``outcome``: succeeded, failed, retried) to the shared counts."""
    try:
        pipe = _redis().pipeline(transaction=False)
        pipe.hincrby(KEY, f"count|{name}|{outcome}", 1)
        if seconds is not None:
            pipe.hincrbyfloat(KEY, f"sum|{name}", seconds)
            pipe.hincrby(KEY, f"n|{name}", 1)
            for bound in BUCKETS:
                if seconds <= bound:
                    pipe.hincrby(KEY, f"le|{name}|{bound}", 1)
        pipe.execute()
    except redis.RedisError:  # metrics never fail a task
        logger.debug("task metrics not recorded", exc_info=True)


def task_metrics_read() -> dict[str, Any]:
    """{"count": {(task, outcome): n}, "sum": {task: s}, "n": {task: n}, "le": {(task, bound): n}}."""
    raw = _redis().hgetall(KEY)
    out: dict[str, Any] = {"count": {}, "sum": {}, "n": {}, "le": {}}
    for key, value in raw.items():
        parts = (key.decode() if isinstance(key, bytes) else str(key)).split("|")
        if parts[0] == "count" and len(parts) == 3:
            out["count"][(parts[1], parts[2])] = int(value)
        elif parts[0] == "sum" and len(parts) == 2:
            out["sum"][parts[1]] = float(value)
        elif parts[0] == "n" and len(parts) == 2:
            out["n"][parts[1]] = int(value)
        elif parts[0] == "le" and len(parts) == 3:
            out["le"][(parts[1], float(parts[2]))] = int(value)
    return out


@task_prerun.connect
def _prerun(task_id: str | None = None, **_: Any) -> None:
    if task_id:
        _started[task_id] = time.perf_counter()


@task_postrun.connect
def _postrun(task_id: str | None = None, task: Any = None, state: str | None = None, **_: Any) -> None:
    started = _started.pop(task_id or "", None)
    if state in {"SUCCESS", "FAILURE"} and task is not None:
        seconds = time.perf_counter() - started if started is not None else None
        task_record(task.name, "succeeded" if state == "SUCCESS" else "failed", seconds)


@task_retry.connect
def _retry(request: Any = None, **_: Any) -> None:
    name = getattr(request, "task", None)
    if name:
        task_record(str(name), "retried", None)
