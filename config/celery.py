"""The Celery application and the one beat schedule holding every periodic task."""

from __future__ import annotations

import os

from celery import Celery

import fleet.core.task_metrics  # noqa: F401 (connects the task signals that count and time every task)

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

app = Celery("otb")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()

app.conf.beat_schedule = {
    "commands-expire": {"task": "fleet.commands.tasks.commands_expire_task", "schedule": 60.0},
    "remote-accesses-expire": {"task": "fleet.commands.tasks.remote_accesses_expire_task", "schedule": 60.0},
    "alerts-evaluate": {"task": "fleet.monitoring.tasks.alerts_evaluate_task", "schedule": 30.0},
    "notifications-requeue-stale": {
        "task": "fleet.monitoring.tasks.notifications_requeue_stale_task",
        "schedule": float(os.environ.get("OTB_NOTIFY_SWEEP_S", "60")),
    },
    "telemetry-presence-sweep": {"task": "fleet.telemetry.tasks.presence_sweep_task", "schedule": 15.0},
    "telemetry-rollup": {"task": "fleet.telemetry.tasks.telemetry_rollup_task", "schedule": 60.0},
    "telemetry-partitions-ensure": {
        "task": "fleet.telemetry.tasks.telemetry_partitions_ensure_task",
        "schedule": 3600.0,
    },
    "telemetry-retention": {"task": "fleet.telemetry.tasks.telemetry_retention_task", "schedule": 3600.0},
    "events-prune": {"task": "fleet.monitoring.tasks.events_prune_task", "schedule": 3600.0},
    "addresses-release-quarantine": {
        "task": "provisioning.tasks.addresses_release_quarantined_task",
        "schedule": 300.0,
    },
    "otbcompat-presence-flush": {
        "task": "otbcompat.tasks.otb_presence_flush_task",
        "schedule": float(os.environ.get("OTB_COMPAT_PRESENCE_FLUSH_S", "10")),
    },
    "rollouts-tick": {
        "task": "fleet.firmware.tasks.rollouts_tick_task",
        "schedule": float(os.environ.get("OTB_ROLLOUT_TICK_S", "30")),
    },
}

# A beat that runs only some entries (comma-separated names), e.g. an end-to-end test of one engine.
if os.environ.get("OTB_BEAT_ONLY"):
    _only = {name.strip() for name in os.environ["OTB_BEAT_ONLY"].split(",")}
    app.conf.beat_schedule = {name: entry for name, entry in app.conf.beat_schedule.items() if name in _only}
