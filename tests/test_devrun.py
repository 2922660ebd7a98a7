"""scripts/devrun.py (`make run`): what reaches the console, the demo logins in the final banner, a
web port of its own when 8000 is taken, and a Ctrl-C that leaves nothing running."""

import importlib.util
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from tests.conftest import management_command_run

REPO_ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = REPO_ROOT / "scripts"


@pytest.fixture(scope="module")
def devrun() -> Iterator[ModuleType]:
    spec = importlib.util.spec_from_file_location("devrun_under_test", SCRIPTS / "devrun.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations via sys.modules
    spec.loader.exec_module(module)  # importing has no side effects
    yield module
    sys.modules.pop(spec.name, None)


# Lines as the children write them (taken from a real `make run`).
WORKER_OUTPUT = """\
/venv/celery/platforms.py:893: SecurityWarning: You're running the worker with superuser privileges: this is
absolutely not recommended!

Please specify a different user using the --uid option.

  _warn_or_raise_security_error(egid, euid, gid, uid,

 -------------- celery@vm v5.7.0 (collider)
--- ***** -----
- ** ---------- .> transport:   redis://:**@127.0.0.1:25485/0
[tasks]
  . fleet.telemetry.tasks.telemetry_rollup_task

[2026-12-06 15:58:50,517: INFO/ForkPoolWorker-2] Task fleet.telemetry.tasks.rollup_task[58d8] succeeded
[2026-12-06 15:58:51,000: ERROR/ForkPoolWorker-1] Task fleet.monitoring.tasks.alerts_task[9a] raised
Traceback (most recent call last):
  File "/app/fleet/monitoring/tasks.py", line 12, in alerts_evaluate_task
ValueError: boom
[2026-12-06 15:58:52,000: INFO/MainProcess] Task fleet.telemetry.tasks.presence_sweep_task[be86] received
"""
WEB_OUTPUT = """\
INFO:     Started server process [19640]
INFO:     127.0.0.1:60648 - "GET /healthz HTTP/1.1" 200 OK
WARNING:  Invalid HTTP request received.
{"ts": "2026-12-06T15:58:50.517+00:00", "level": "info", "logger": "fleet.live", "event": "session opened"}
{"ts": "2026-12-06T15:58:50.517+00:00", "level": "error", "logger": "django.request", "event": "Error"}
"""
SIM_OUTPUT = """\
{"event": "progress", "t": 5.0, "boxes": 20, "started": 20, "connected": 20, "sent": 248, "errors": 0}
{"ts":"2026-12-06T15:58:50.517Z","level":"warning","event":"backoff","fields":{"delay_s":1.2}}
"""


def console(devrun: ModuleType, output: str) -> list[str]:
    loud = devrun.ConsoleFilter()
    return [line for line in output.splitlines() if loud(line)]


def test_the_console_gets_warnings_and_errors_the_logs_get_everything(devrun: ModuleType) -> None:
    # Celery's banner, its root warning, task chatter and access logs stay in var/log/*.log
    worker = WORKER_OUTPUT.splitlines()
    error = worker.index(next(line for line in worker if "ERROR/" in line))
    assert console(devrun, WORKER_OUTPUT) == worker[error : error + 4]
    assert worker[error + 3] == "ValueError: boom"  # the whole traceback
    web = WEB_OUTPUT.splitlines()
    assert console(devrun, WEB_OUTPUT) == [web[2], web[4]]
    assert console(devrun, SIM_OUTPUT) == [SIM_OUTPUT.splitlines()[1]]


def test_simulator_progress_tells_when_the_fleet_is_connected(devrun: ModuleType) -> None:
    progress = devrun.SimulatorProgress()
    assert progress.describe() == "simulated boxes starting"
    progress('{"event": "progress", "boxes": 20, "connected": 7}')
    assert not progress.all_connected.is_set()
    assert progress.describe() == "7 of 20 simulated boxes connected so far"
    progress(SIM_OUTPUT.splitlines()[0])
    assert progress.all_connected.is_set()
    assert progress.describe() == "20 simulated boxes connected"


@pytest.mark.django_db
def test_the_banner_repeats_the_logins_seed_demo_prints(devrun: ModuleType, settings, tmp_path: Path) -> None:
    # given what seed_demo prints
    settings.VAR_DIR = tmp_path
    status, output = management_command_run("seed_demo")
    assert status == 0
    # when the final banner is made from it
    logins = devrun.demo_logins(output)
    banner = "\n".join(
        devrun.banner_lines(30123, logins, tmp_path, ["web", "sim"], "20 simulated boxes connected")
    )
    # then it shows both sign-ins with their passwords, and the portal's address
    assert "customer  demo@example.com / demo-password-1" in banner
    assert "staff     staff@example.com / staff-password-1" in banner
    assert "portal    http://127.0.0.1:30123/" in banner
    assert "fleet     20 simulated boxes connected" in banner


def test_the_web_port_is_the_default_while_free_else_one_of_the_checkouts_own(
    devrun: ModuleType, tmp_path: Path
) -> None:
    paths = devrun.devservices.Paths(tmp_path)
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        taken = held.getsockname()[1]
        # when the default port is taken, another is chosen and the person is told
        port, note = devrun.choose_web_port({}, paths, default=taken)
        assert port != taken and 30000 <= port < 32700
        assert note and f"port {taken} is in use" in note and f"127.0.0.1:{port} instead" in note
        # an OTB_PORT that is taken is refused, naming it
        with pytest.raises(SystemExit, match=f"OTB_PORT={taken}, but 127.0.0.1:{taken} is in use"):
            devrun.choose_web_port({"OTB_PORT": str(taken)}, paths, default=taken)
    # and a free default is used as it is
    assert devrun.choose_web_port({}, paths, default=taken) == (taken, None)


# --------------------------------------------------------------------------------------------
# `make run` in a second checkout, end to end
# --------------------------------------------------------------------------------------------

COPIED = ("config", "fleet", "provisioning", "frontend", "scripts", "manage.py", "pyproject.toml")


def processes_inside(root: Path) -> list[str]:
    """Processes whose working directory is inside root (the stack chdirs there: the children, and
    PostgreSQL and Redis into their folders under var/)."""
    found: list[str] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cwd = Path(os.readlink(entry / "cwd"))
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if cwd == root or root in cwd.parents:
            found.append(f"{entry.name}: {cmdline[:120]}")
    return found


@pytest.mark.e2e
def test_make_run_in_a_second_checkout_has_its_own_ports_shows_the_logins_and_stops_everything() -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "OTB_PORT")}
    env = {k: v for k, v in env.items() if not k.startswith(("OTB_PG", "OTB_REDIS", "OTB_VAR", "DJANGO_"))}
    # Not under pytest's temporary root: other pytest sessions reset it to 0700 (see test_devservices).
    with tempfile.TemporaryDirectory(prefix="otb-run-") as base:
        root = Path(base) / "otb"
        root.mkdir()
        for name in COPIED:
            source = REPO_ROOT / name
            if source.is_dir():
                shutil.copytree(
                    source, root / name, ignore=shutil.ignore_patterns("__pycache__", "node_modules")
                )
            else:
                shutil.copy(source, root / name)
        # given port 8000 held by another program (or another checkout's make run)
        holder = socket.socket()
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            holder.bind(("127.0.0.1", 8000))
            holder.listen()
        except OSError:
            holder.close()  # already taken by someone else: just as good
        proc = subprocess.Popen(
            [sys.executable, str(root / "scripts" / "devrun.py")],
            cwd=root,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        lines: list[str] = []
        banner_done = threading.Event()

        def read() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                lines.append(line)
                if line.startswith("=" * 72) and any("portal" in seen for seen in lines):
                    banner_done.set()

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        try:
            # when make run starts there
            assert banner_done.wait(300), "".join(lines)
            output = "".join(lines)
            port = int(re.search(r"portal +http://127\.0\.0\.1:(\d+)/", output).group(1))  # type: ignore[union-attr]
            # then it says it serves on a port of its own, and seed_demo printed that one
            assert port != 8000
            assert "port 8000 is in use (another checkout's `make run`, or another program): " in output
            assert f"URL:      http://127.0.0.1:{port}/" in output
            assert re.search(r"embedded PostgreSQL on 127\.0\.0\.1:\d+ \(started\)", output)
            # the banner repeats the logins and says the fleet is connected
            assert "customer  demo@example.com / demo-password-1" in output
            assert "staff     staff@example.com / staff-password-1" in output
            assert "fleet     20 simulated boxes connected" in output
            # no Celery banner or access log on the console: they are in var/log
            assert "celery@" not in output and '"GET /healthz' not in output
            assert '"GET /healthz' in (root / "var" / "log" / "web.log").read_text()
            assert "celery@" in (root / "var" / "log" / "worker.log").read_text()
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as response:
                assert response.status == 200
            assert processes_inside(root)
        finally:
            # when Ctrl-C reaches it
            os.killpg(proc.pid, signal.SIGINT)
            try:
                proc.wait(timeout=90)
            finally:
                if proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGKILL)
                holder.close()
                reader.join(timeout=5)
        # then it stops everything it started, its embedded services too, and exits 0
        output = "".join(lines)
        assert proc.returncode == 0, output[-3000:]
        assert "stopped embedded PostgreSQL" in output
        deadline = time.monotonic() + 10
        while processes_inside(root) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert processes_inside(root) == []
