"""Periodic work of the /1.0 protocol (declared in the beat schedule in config/celery.py)."""

from __future__ import annotations

from celery import shared_task

from otbcompat.presence import presence_flush


@shared_task(name="otbcompat.tasks.otb_presence_flush_task", time_limit=30, ignore_result=True)
def otb_presence_flush_task() -> int:
    """Every OTB_COMPAT_PRESENCE_FLUSH_S: write the polls of stock boxes noted in Redis (presence)."""
    return presence_flush()
