"""Periodic telemetry work (declared in the beat schedule in config/celery.py; routed to the
``telemetry`` queue). Each task calls one service and returns a small summary."""

from __future__ import annotations

from typing import Any

from celery import shared_task

from fleet.telemetry import services, storage


@shared_task(
    name="fleet.telemetry.tasks.telemetry_partitions_ensure_task", time_limit=120, ignore_result=True
)
def telemetry_partitions_ensure_task(days_ahead: int = 3) -> int:
    return storage.telemetry_partitions_ensure(days_ahead=days_ahead)


@shared_task(name="fleet.telemetry.tasks.telemetry_rollup_task", time_limit=600, ignore_result=True)
def telemetry_rollup_task() -> dict[str, Any]:
    return storage.telemetry_rollup()


@shared_task(name="fleet.telemetry.tasks.telemetry_retention_task", time_limit=600, ignore_result=True)
def telemetry_retention_task() -> list[str]:
    return storage.telemetry_retention()


@shared_task(name="fleet.telemetry.tasks.presence_sweep_task", time_limit=14, ignore_result=True)
def presence_sweep_task() -> int:
    """Every 15 s: boxes silent for 3 heartbeat intervals go offline (detected within one tick)."""
    swept = services.presence_sweep()
    if swept >= 1000:  # more stale boxes than one bounded batch: continue right away
        presence_sweep_task.delay()
    return swept
