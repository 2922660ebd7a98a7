"""Backup and restore of an ``otb-agent`` box end to end: a real uvicorn server and a real ``otb-agent``
process (enrolled, then ``run``), the ``backup`` and ``restore`` commands sent with the service and
delivered over the agent's websocket session, the files going through the agent HTTP API."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fleet.commands.choices import CommandKind, CommandState
from fleet.commands.models import Backup, BackupFile, Command
from fleet.commands.services import command_create
from fleet.core.audit import Actor
from tests.conftest import FACTORY_SECRET
from tests.e2e.browser import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

AGENT = str(Path(sys.executable).with_name("otb-agent"))


@pytest.fixture
def agent_processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)


def finished(command: Command) -> Command | None:
    command.refresh_from_db()
    return command if command.is_finished else None


def test_agent_backs_up_and_restores_its_configuration(
    asgi_server: Any,
    people: Any,
    claimed_box_factory: Any,
    agent_processes: list[subprocess.Popen[bytes]],
    tmp_path: Path,
) -> None:
    # given a claimed, provisioned box enrolled by the real agent, with a file of its own to keep
    box = claimed_box_factory(people.org)
    state_dir = tmp_path / "agent"
    enroll = subprocess.run(
        [AGENT, "enroll", "--server", asgi_server.url, "--serial", box.serial, "--secret", FACTORY_SECRET,
         "--state-dir", str(state_dir)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert enroll.returncode == 0, enroll.stdout + enroll.stderr
    network = tmp_path / "etc" / "config" / "network"
    network.parent.mkdir(parents=True)
    original = "config interface 'lan'\n\toption ipaddr '192.168.100.1'\n"
    network.write_text(original)
    os.chmod(network, 0o640)
    env = {**os.environ, "OTB_AGENT_BACKUP_PATHS": f"{network}:{tmp_path / 'etc' / 'missing'}"}
    with (tmp_path / "agent.log").open("wb") as log:
        agent = subprocess.Popen(
            [AGENT, "run", "--state-dir", str(state_dir), "--collector", "simulated", "--no-probe",
             "--backoff-base", "0.2", "--backoff-cap", "1"],
            stdout=log, stderr=log, env=env,
        )  # fmt: skip
    agent_processes.append(agent)
    wait_until(lambda: (state_dir / "config.json").exists(), timeout=30, message="the agent got no config")

    # when an admin asks for a backup
    admin = Actor.for_user(people.admin)
    command = command_create(actor=admin, box=box, kind=CommandKind.BACKUP)
    done = wait_until(lambda: finished(command), timeout=30, message="the backup command did not finish")

    # then the backup holds the agent's configuration (secrets redacted) and the box's own file
    assert done.state == CommandState.SUCCEEDED, (done.error, done.result)
    backup = Backup.objects.get(pk=done.result["backup_id"])
    assert (backup.box_id, backup.command_id, backup.source) == (box.pk, command.pk, "agent")
    files = {item.filename: item for item in BackupFile.objects.filter(backup=backup)}
    config_path = str(state_dir.resolve() / "config.json")
    assert set(files) == {config_path, str(network)}
    assert (files[str(network)].content, files[str(network)].mode) == (original, 0o640)
    saved = json.loads((state_dir / "config.json").read_text())
    password = saved["credentials"]["shadowsocks"]["password"]
    assert password and password not in files[config_path].content
    assert '"password": "<redacted>"' in files[config_path].content
    assert not any("credentials.json" in name or "wg_private_key" in name for name in files)
    assert done.result["skipped"] == [{"filename": str(tmp_path / "etc" / "missing"), "reason": "missing"}]

    # when the file changes on the box and the admin restores the backup
    network.write_text("config interface 'lan'\n\toption ipaddr '10.0.0.1'\n")
    os.chmod(network, 0o600)
    restore = command_create(
        actor=admin, box=box, kind=CommandKind.RESTORE, params={"backup_id": str(backup.pk)}
    )
    done = wait_until(lambda: finished(restore), timeout=30, message="the restore command did not finish")

    # then the box's file is back, mode included, and the server-managed file was left to the server
    assert done.state == CommandState.SUCCEEDED, (done.error, done.result)
    assert network.read_text() == original and (network.stat().st_mode & 0o7777) == 0o640
    assert done.result["written"] == [str(network)]
    assert [item["filename"] for item in done.result["skipped"]] == [config_path]
    assert json.loads((state_dir / "config.json").read_text()) == saved
