"""A rollout advanced by a real Celery beat and a real worker (two processes) on Redis, not eager
mode: beat fires the ``rollouts`` tick every second onto the ``rollouts`` queue, a prefork worker
with two processes (so ticks can overlap) runs it, and the test plays the 20 boxes."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.db import connection

from config.celery import app as celery_app
from fleet.commands.models import Command
from fleet.firmware.choices import RolloutState, UpgradeState
from fleet.firmware.services import rollout_create, rollout_start
from tests.fleet.firmware.firmware_helpers import ACTOR, Responder, make_fleet, make_release

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

ROOT = Path(__file__).resolve().parents[2]


def _spawn(args: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    with log.open("w") as output:
        return subprocess.Popen(
            [str(Path(sys.executable).with_name("celery")), "-A", "config", *args],
            cwd=ROOT,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
        )


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


@pytest.fixture
def celery_beat_and_worker(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    db = connection.settings_dict
    env = {
        **os.environ,
        "DATABASE_URL": f"postgresql://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
        "REDIS_URL": settings.REDIS_URL,
        "OTB_ENV": "test",
        "OTB_ROLLOUT_TICK_S": "1",
        "OTB_BEAT_ONLY": "rollouts-tick",
        "OTB_PROCESS_NAME": "otb-test-rollouts",
    }
    env.pop("OTB_TEST_DB_NAME", None)
    celery_app.control.purge()
    worker_log, beat_log = tmp_path / "worker.log", tmp_path / "beat.log"
    worker = _spawn(
        ["worker", "-Q", "rollouts", "-c", "2", "--without-gossip", "--without-mingle", "-l", "info"],
        worker_log,
        env,
    )
    beat = _spawn(
        ["beat", "-s", str(tmp_path / "beat-schedule"), "--pidfile=", "-l", "info"],
        beat_log,
        env,
    )
    try:
        yield worker_log, beat_log
    finally:
        _stop(beat)
        _stop(worker)


def test_a_rollout_runs_through_celery_beat_and_worker(celery_beat_and_worker: Any) -> None:
    # given 20 online boxes and a started two-phase rollout
    worker_log, beat_log = celery_beat_and_worker
    make_fleet(20)
    rollout = rollout_create(
        actor=ACTOR, release=make_release(), name="e2e", phases=[50, 100], soak_s=0, force=True
    )
    rollout_start(actor=ACTOR, rollout=rollout)
    responder = Responder()

    # when beat and the worker advance it while the boxes answer their commands
    deadline = time.monotonic() + 45
    while time.monotonic() < deadline:
        responder.respond()
        rollout.refresh_from_db()
        if rollout.state == RolloutState.COMPLETED:
            break
        time.sleep(0.3)

    # then every box was upgraded exactly once, phase by phase, by the worker
    logs = f"worker:\n{worker_log.read_text()[-3000:]}\nbeat:\n{beat_log.read_text()[-1500:]}"
    assert rollout.state == RolloutState.COMPLETED, logs
    assert rollout.current_phase == 1
    assert set(rollout.upgrades.values_list("state", flat=True)) == {UpgradeState.SUCCEEDED}
    assert Command.objects.filter(kind="firmware_upgrade").count() == 20
    assert "rollouts_tick_task" in worker_log.read_text()
    assert "rollouts-tick" in beat_log.read_text() or "rollouts_tick_task" in beat_log.read_text()
