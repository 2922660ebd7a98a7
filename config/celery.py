"""The Celery application and the one beat schedule holding every periodic task."""

from __future__ import annotations

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

app = Celery("otb")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()

app.conf.beat_schedule = {
    "commands-expire": {"task": "fleet.commands.tasks.commands_expire_task", "schedule": 60.0},
    "alerts-evaluate": {"task": "fleet.monitoring.tasks.alerts_evaluate_task", "schedule": 30.0},
    "notifications-requeue-stale": {
        "task": "fleet.monitoring.tasks.notifications_requeue_stale_task",
        "schedule": 600.0,
    },
    "telemetry-presence-sweep": {"task": "fleet.telemetry.tasks.presence_sweep_task", "schedule": 15.0},
    "telemetry-rollup": {"task": "fleet.telemetry.tasks.telemetry_rollup_task", "schedule": 60.0},
    "telemetry-partitions-ensure": {
        "task": "fleet.telemetry.tasks.telemetry_partitions_ensure_task",
        "schedule": 3600.0,
    },
    "telemetry-retention": {"task": "fleet.telemetry.tasks.telemetry_retention_task", "schedule": 3600.0},
    "addresses-release-quarantine": {
        "task": "provisioning.tasks.addresses_release_quarantined_task",
        "schedule": 300.0,
    },
}
