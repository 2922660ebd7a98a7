"""End to end on loopback: a real uvicorn server, a real `otb-agent` (enroll + run, simulated collector).

The server is killed with SIGKILL mid-stream and restarted on the same port, then frozen (SIGSTOP) for
a few seconds as if the network were cut, while the agent keeps sampling into its buffer. In the end
every telemetry sequence number 1..N the agent had acknowledged is stored exactly once.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.db import connection

from fleet.telemetry.models import BoxStatus
from tests.e2e.browser import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

ROOT = Path(__file__).resolve().parents[2]
AGENT = str(Path(sys.executable).with_name("otb-agent"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def database_url() -> str:
    """The pytest-django test database, for the server subprocess."""
    settings = connection.settings_dict
    password = f":{settings['PASSWORD']}" if settings.get("PASSWORD") else ""
    return (
        f"postgresql://{settings['USER']}{password}@{settings['HOST']}:{settings['PORT']}/{settings['NAME']}"
    )


class Server:
    """One uvicorn process serving config.asgi on a fixed port (restartable on the same port)."""

    def __init__(self, port: int, env: dict[str, str], log: Path) -> None:
        self.port = port
        self.env = env
        self.log = log
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        command = [
            sys.executable, "-m", "uvicorn", "config.asgi:application", "--host", "127.0.0.1",
            "--port", str(self.port), "--ws-max-size", "65536", "--log-level", "warning",
        ]  # fmt: skip
        with self.log.open("a") as log:
            self.process = subprocess.Popen(command, cwd=ROOT, env=self.env, stdout=log, stderr=log)
        wait_until(self.healthy, timeout=30, message="server did not become healthy")

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=1) as response:
                return response.status == 200
        except OSError:
            return False

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def signal(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)


def stored_seqs(box_id: Any) -> list[tuple[int, int, int]]:
    """(seq, rows, distinct sample indexes) per stored telemetry message of the box."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT seq, count(*), count(DISTINCT idx) FROM telemetry_box_sample WHERE box_id = %s"
            " GROUP BY seq ORDER BY seq",
            [box_id],
        )
        return cursor.fetchall()


def max_seq(box_id: Any) -> int:
    rows = stored_seqs(box_id)
    return rows[-1][0] if rows else 0


def agent_status(state_dir: Path) -> dict[str, Any]:
    completed = subprocess.run(
        [AGENT, "status", "--state-dir", str(state_dir), "--json"],
        capture_output=True,
        text=True,
        check=False,
    )
    try:
        return json.loads(completed.stdout or "{}")
    except ValueError:
        return {}


@pytest.fixture
def processes() -> Iterator[list[Any]]:
    started: list[Any] = []
    yield started
    for thing in reversed(started):
        if isinstance(thing, Server):
            if thing.process is not None and thing.process.poll() is None:
                thing.signal(signal.SIGCONT)
            thing.kill()
        elif thing.poll() is None:
            thing.kill()
            thing.wait(10)


def test_agent_telemetry_survives_server_crash_and_outage(
    box_factory: Any, processes: list[Any], tmp_path: Path
) -> None:
    from tests.conftest import FACTORY_SECRET

    # given a server on loopback and an imported box enrolled by the real agent
    box = box_factory()
    env = {
        **os.environ,
        "DATABASE_URL": database_url(),
        "OTB_ENV": "test",
        "OTB_TELEMETRY_INTERVAL_S": "1",
        "OTB_HEARTBEAT_INTERVAL_S": "5",
        "OTB_PROCESS_NAME": "e2e-server",
    }
    env.pop("OTB_TEST_DB_NAME", None)
    port = free_port()
    server = Server(port, env, tmp_path / "server.log")
    processes.append(server)
    server.start()
    state_dir = tmp_path / "agent"
    enroll = subprocess.run(
        [AGENT, "enroll", "--server", f"http://127.0.0.1:{port}", "--serial", box.serial,
         "--secret", FACTORY_SECRET, "--state-dir", str(state_dir)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert enroll.returncode == 0, enroll.stdout + enroll.stderr

    # when the agent runs with a short telemetry interval
    with (tmp_path / "agent.log").open("w") as agent_log:
        agent = subprocess.Popen(
            [AGENT, "run", "--state-dir", str(state_dir), "--collector", "simulated",
             "--telemetry-interval", "0.5", "--no-probe", "--backoff-base", "0.2", "--backoff-cap", "1"],
            stdout=agent_log, stderr=agent_log,
        )  # fmt: skip
    processes.append(agent)
    wait_until(lambda: max_seq(box.pk) >= 4, timeout=30, message="no telemetry landed")
    assert BoxStatus.objects.get(box=box).online is True

    # and the server is killed with SIGKILL mid-stream and restarted on the same port
    server.kill()
    before_crash = max_seq(box.pk)
    server.start()
    wait_until(
        lambda: max_seq(box.pk) >= before_crash + 4,
        timeout=30,
        message="telemetry did not resume after the crash",
    )

    # and the server then freezes for 5 s (a network cut: the agent buffers, nothing is acked)
    server.signal(signal.SIGSTOP)
    time.sleep(5)
    frozen_at = max_seq(box.pk)
    server.signal(signal.SIGCONT)
    wait_until(
        lambda: max_seq(box.pk) >= frozen_at + 6,
        timeout=30,
        message="telemetry did not resume after the outage",
    )

    # and the agent drains its buffer and is stopped
    def drained() -> bool:
        status = agent_status(state_dir)
        return status.get("buffer_depth") == 0 and status.get("last_acked_seq", 0) >= frozen_at + 6

    wait_until(drained, timeout=30, message=f"agent buffer did not drain: {agent_status(state_dir)}")
    agent.send_signal(signal.SIGTERM)
    agent.wait(15)
    status = agent_status(state_dir)

    # then every sequence number 1..N is stored exactly once, none missing
    # (a message sent just before SIGTERM may be stored but not yet acked: it is still in the
    # agent's buffer, to be resent and deduplicated, so it is neither lost nor duplicated)
    rows = stored_seqs(box.pk)
    last = status["last_acked_seq"]
    stored_max = rows[-1][0]
    assert last >= 14
    assert [row[0] for row in rows] == list(range(1, stored_max + 1)), "a sequence number is missing"
    assert stored_max >= last, "an acknowledged message is not stored"
    assert stored_max - last <= status.get("buffer_depth", 0), "stored, unacked and no longer buffered"
    assert all(count == distinct for _, count, distinct in rows), "a sample was stored twice"
    assert status.get("dropped_total", 0) == 0
    assert BoxStatus.objects.get(box=box).last_seq == stored_max
    # and every stored message has its WAN rows too
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(DISTINCT seq) FROM telemetry_wan_sample WHERE box_id = %s", [box.pk])
        assert cursor.fetchone()[0] == stored_max
    server.kill()
