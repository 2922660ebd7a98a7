"""The seed_demo management command: a second run finds everything in place, and its CSV lets a box
enroll."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import pytest
from rest_framework.test import APIClient

from fleet.core.choices import BoxState
from fleet.core.models import Box
from tests.conftest import management_command_run as run

pytestmark = pytest.mark.django_db


def test_seed_demo_runs_twice(settings: Any, tmp_path: Path) -> None:
    settings.VAR_DIR = tmp_path
    settings.STORAGES = {
        **settings.STORAGES,
        "default": {
            "BACKEND": "django.core.files.storage.FileSystemStorage",
            "OPTIONS": {"location": str(tmp_path / "media")},
        },
    }
    # when the seed runs twice
    status, first = run("seed_demo")
    counts = (Box.objects.count(), Box.objects.filter(state=BoxState.CLAIMED).count())
    status2, second = run("seed_demo")
    # then the second run finds everything in place
    assert status == status2 == 0
    assert counts == (20, 10)
    assert (Box.objects.count(), Box.objects.filter(state=BoxState.CLAIMED).count()) == counts
    assert "0 imported, 20 already there, 0 rejected" in second
    assert "demo@example.com / demo-password-1" in first and "staff@example.com" in first
    assert "http://127.0.0.1:8000/" in first
    claimed = Box.objects.filter(state=BoxState.CLAIMED)
    assert all(box.server_id and box.config_hash for box in claimed)
    assert claimed.exclude(wan_policy__interfaces=[]).count() >= 3
    with (tmp_path / "demo-boxes.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 20 and list(rows[0]) == ["serial", "factory_secret", "claim_code"]
    # and the CSV secrets let a box enroll
    response = APIClient().post(
        "/api/v1/agent/enroll",
        {"serial": rows[0]["serial"], "factory_secret": rows[0]["factory_secret"]},
        format="json",
    )
    assert response.status_code == 201, response.content


def test_seed_demo_prints_the_address_make_run_serves_on(settings: Any, tmp_path: Path) -> None:
    # given make run serving on a port of its own (it passes OTB_PORT, the settings make LOCAL_URL)
    settings.VAR_DIR = tmp_path
    settings.OTB = {**settings.OTB, "LOCAL_URL": "http://127.0.0.1:30123/"}
    # when the demo is seeded
    status, output = run("seed_demo")
    # then the logins point at that address, not at 8000
    assert status == 0
    assert "URL:      http://127.0.0.1:30123/" in output
    assert "(http://127.0.0.1:30123/admin/)" in output
    assert ":8000" not in output
