"""Celery edge for commands."""

from __future__ import annotations

import logging

from celery import shared_task

from fleet.commands.remote_access import remote_accesses_expire
from fleet.commands.services import commands_expire

logger = logging.getLogger(__name__)


@shared_task(name="fleet.commands.tasks.commands_expire_task", ignore_result=True, time_limit=60)
def commands_expire_task() -> int:
    """Periodic (every 60 s): expire open commands past their TTL."""
    expired = commands_expire()
    if expired:
        logger.info("expired %d commands", expired)
    return expired


@shared_task(name="fleet.commands.tasks.remote_accesses_expire_task", ignore_result=True, time_limit=60)
def remote_accesses_expire_task() -> int:
    """Periodic (every 60 s): end remote accesses past their time (the box is told to disconnect)."""
    return remote_accesses_expire()
