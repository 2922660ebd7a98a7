"""The Celery application and the one beat schedule holding every periodic task."""

from __future__ import annotations

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

app = Celery("otb")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()

app.conf.beat_schedule = {
    "addresses-release-quarantine": {
        "task": "provisioning.tasks.addresses_release_quarantined_task",
        "schedule": 300.0,
    },
}
