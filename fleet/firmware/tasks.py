"""Celery tasks of the rollout engine (queue ``rollouts``, routed in settings by name).

They take ids, call one service, and retry with backoff on database hiccups. The periodic one is
declared in the beat schedule in ``config/celery.py``.
"""

from __future__ import annotations

from typing import Any

from celery import shared_task
from django.db import DatabaseError

from fleet.firmware.engine import rollout_advance, rollouts_tick
from fleet.firmware.services import ROLLOUT_ADVANCE_TASK


@shared_task(
    name="fleet.firmware.tasks.rollouts_tick_task",
    queue="rollouts",
    autoretry_for=(DatabaseError,),
    retry_backoff=True,
    retry_backoff_max=60,
    max_retries=3,
    soft_time_limit=240,
    time_limit=300,
    ignore_result=True,
)
def rollouts_tick_task() -> dict[str, Any]:
    """Advance every active rollout (idempotent; concurrent runs skip each other's locked rows)."""
    return rollouts_tick().as_dict()


@shared_task(
    name=ROLLOUT_ADVANCE_TASK,
    queue="rollouts",
    autoretry_for=(DatabaseError,),
    retry_backoff=True,
    retry_backoff_max=60,
    max_retries=5,
    soft_time_limit=120,
    time_limit=180,
    ignore_result=True,
)
def rollout_advance_task(rollout_id: str) -> str:
    """Advance one rollout now (queued after a start, resume or retry)."""
    return rollout_advance(rollout_id=rollout_id)
