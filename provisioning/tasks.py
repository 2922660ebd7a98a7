"""Celery tasks of provisioning. Tasks take ids, process bounded batches, and re-queue themselves."""

from __future__ import annotations

from celery import shared_task

from provisioning.services.infrastructure import QUARANTINE_RELEASE_BATCH, addresses_release_quarantined


@shared_task(
    name="provisioning.tasks.addresses_release_quarantined_task", time_limit=120, soft_time_limit=100
)
def addresses_release_quarantined_task() -> int:
    """Delete one batch of quarantined assignments past their cool-down; re-queue while batches are
    full so a large backlog drains without one long transaction."""
    deleted = addresses_release_quarantined()
    if deleted >= QUARANTINE_RELEASE_BATCH:
        addresses_release_quarantined_task.delay()
    return deleted
