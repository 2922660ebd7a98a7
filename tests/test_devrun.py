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


REFUSED = (
    '{"ts":"2026-12-06T17:17:54.513Z","level":"error","event":"unauthorized","fields":{"serial":"DEMO-0001",'
    '"message":"server closed the session with 4001"}}'
)

# A stand-in for `otb-agent simulate`: with a token in its state folder, every box is refused (as
# when the tokens belong to another database); without, it enrolls and its boxes connect.
FAKE_AGENT = """#!{python}
import json, sys, time
from pathlib import Path
state = Path(sys.argv[sys.argv.index("--state-dir") + 1])
if (state / "token").exists():
    print({refused!r}, flush=True)
    print(json.dumps({{"event": "summary", "boxes": 2, "connected": 0, "unauthorized": 2}}), flush=True)
    sys.exit(1)
(state / "token").write_text("new")
print(json.dumps({{"event": "progress", "boxes": 2, "connected": 2, "unauthorized": 0}}), flush=True)
time.sleep(60)
"""


def test_simulated_boxes_whose_tokens_are_refused_are_enrolled_again_once(
    devrun: ModuleType, tmp_path: Path
) -> None:
    # given a simulator whose saved tokens this server refuses
    agent = tmp_path / "otb-agent"
    agent.write_text(FAKE_AGENT.format(python=sys.executable, refused=REFUSED))
    agent.chmod(0o755)
    state = tmp_path / "sim" / "key"
    state.mkdir(parents=True)
    (state / "token").write_text("stale")
    sup = devrun.Supervisor(env=dict(os.environ), cwd=tmp_path, log_dir=tmp_path / "log")
    simulator = devrun.Simulator(agent, 8000, tmp_path / "boxes.csv", state)
    stop = devrun.StopFlag()
    try:
        # when it starts and is waited for
        simulator.start(sup)
        simulator.wait_connected(sup, stop, timeout=30)
        # then its state was cleared once and the boxes enrolled again and connected
        assert simulator.enrolled_again
        assert simulator.progress.all_connected.is_set()
        assert (state / "token").read_text() == "new"
        assert sup.exited() is None
        # the refusals stayed in the log, not on the console
        assert REFUSED in (tmp_path / "log" / "sim.log").read_text()
        assert not devrun.SimulatorConsoleFilter()(REFUSED)
        # and a second refusal is not retried (the log's last lines are shown instead)
        assert simulator.child is not None
        simulator.progress.unauthorized, simulator.progress.connected = 2, 0
        assert not simulator.recover(sup, simulator.child)
    finally:
        sup.stop_all(grace=2)


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
        first = devrun.claim_web_port({}, paths, default=taken)
        assert first.port != taken and 30000 <= first.port < 32700
        assert first.note and f"port {taken} is in use" in first.note
        assert f"127.0.0.1:{first.port} instead" in first.note
        # a second make run of the same checkout starting meanwhile gets yet another port: the
        # first one's is held from the moment it is chosen
        second = devrun.claim_web_port({}, paths, default=taken)
        assert second.port not in (taken, first.port)
        first.release()
        second.release()
        # an OTB_PORT that is taken is refused, naming it
        with pytest.raises(SystemExit, match=f"OTB_PORT={taken}, but 127.0.0.1:{taken} is in use"):
            devrun.claim_web_port({"OTB_PORT": str(taken)}, paths, default=taken)
    # and a free default is used as it is
    chosen = devrun.claim_web_port({}, paths, default=taken)
    chosen.release()
    assert (chosen.port, chosen.note) == (taken, None)


def test_a_server_answering_on_the_port_counts_only_when_it_is_ours(devrun: ModuleType) -> None:
    # given a port another process listens on
    code = (
        "import socket, sys, time; s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen();"
        " print(s.getsockname()[1], flush=True); time.sleep(60)"
    )
    other = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert other.stdout is not None
        port = int(other.stdout.readline())
        # then that process serves it, and this one does not
        assert devrun.serves_port(other.pid, port)
        assert not devrun.serves_port(os.getpid(), port)
    finally:
        other.kill()
        other.wait()


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


class MakeRun:
    """`make run` (scripts/devrun.py) in a copy of the checkout, its output collected."""

    def __init__(self, root: Path, env: dict[str, str]) -> None:
        root.mkdir(parents=True)
        for name in COPIED:
            source = REPO_ROOT / name
            if source.is_dir():
                shutil.copytree(
                    source, root / name, ignore=shutil.ignore_patterns("__pycache__", "node_modules")
                )
            else:
                shutil.copy(source, root / name)
        self.root = root
        self.lines: list[str] = []
        self.banner_done = threading.Event()
        self.proc = subprocess.Popen(
            [sys.executable, str(root / "scripts" / "devrun.py")],
            cwd=root,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,  # its own process group, as a terminal's foreground job
        )
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)
            if line.startswith("=" * 72) and any("portal" in seen for seen in self.lines):
                self.banner_done.set()

    @property
    def output(self) -> str:
        return "".join(self.lines)

    @property
    def port(self) -> int:
        match = re.search(r"portal +http://127\.0\.0\.1:(\d+)/", self.output)
        assert match, self.output
        return int(match.group(1))

    def ctrl_c(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)
        try:
            self.proc.wait(timeout=90)
        finally:
            if self.proc.poll() is None:
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.reader.join(timeout=5)


@pytest.mark.e2e
def test_make_run_in_two_checkouts_at_once_with_make_test_beside_them() -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "OTB_PORT")}
    env = {k: v for k, v in env.items() if not k.startswith(("OTB_PG", "OTB_REDIS", "OTB_VAR", "DJANGO_"))}
    # Not under pytest's temporary root: other pytest sessions reset it to 0700 (see test_devservices).
    with tempfile.TemporaryDirectory(prefix="otb-run-") as base:
        # when two checkouts start make run at the same time
        runs = [MakeRun(Path(base) / "first" / "otb", env), MakeRun(Path(base) / "second" / "otb", env)]
        try:
            for run in runs:
                assert run.banner_done.wait(300), run.output
            first, second = runs
            # then each serves on a port of its own; at most one has 8000, the other says why not
            assert first.port != second.port
            for run, other in ((first, second), (second, first)):
                output = run.output
                if other.port == 8000:
                    assert (
                        "port 8000 is in use (another checkout's `make run`, or another program): " in output
                    )
                # seed_demo printed the real address, the banner repeats the logins and the fleet
                assert f"URL:      http://127.0.0.1:{run.port}/" in output
                assert re.search(r"embedded PostgreSQL on 127\.0\.0\.1:\d+ \(started\)", output)
                assert "customer  demo@example.com / demo-password-1" in output
                assert "staff     staff@example.com / staff-password-1" in output
                assert "fleet     20 simulated boxes connected" in output
                # no Celery banner or access log on the console: they are in var/log
                assert "celery@" not in output and '"GET /healthz' not in output
                assert "celery@" in (run.root / "var" / "log" / "worker.log").read_text()
                with urllib.request.urlopen(f"http://127.0.0.1:{run.port}/healthz", timeout=10) as response:
                    assert response.status == 200
            # and their simulated boxes talk to their own server only (shared demo serials would
            # replace each other's sessions and end a simulator)
            assert '"GET /healthz' in (first.root / "var" / "log" / "web.log").read_text()
            assert '"GET /healthz' in (second.root / "var" / "log" / "web.log").read_text()
            # when make test runs in the first checkout meanwhile, with the same services
            test = subprocess.run(
                [sys.executable, str(first.root / "scripts" / "devservices.py"), "exec", "--", "true"],
                cwd=first.root,
                env=env,
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert test.returncode == 0, test.stderr
            assert "(already running)" in test.stderr and "left running: in use" in test.stderr
            time.sleep(3)
            for run in runs:
                assert run.proc.poll() is None, run.output[-3000:]
                assert "exited unexpectedly" not in run.output and "unauthorized" not in run.output
        finally:
            # when Ctrl-C reaches them
            for run in runs:
                run.ctrl_c()
        # then each stops everything it started, its embedded services too, and exits 0
        for run in runs:
            assert run.proc.returncode == 0, run.output[-3000:]
            assert "stopped embedded PostgreSQL" in run.output
            deadline = time.monotonic() + 10
            while processes_inside(run.root) and time.monotonic() < deadline:
                time.sleep(0.2)
            assert processes_inside(run.root) == []
