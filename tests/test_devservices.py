"""scripts/devservices.py: each checkout's embedded PostgreSQL and Redis on its own ports, two
checkouts at the same time, services that live as long as the command that needed them, and a
failed start that leaves nothing running.

The checkouts are temporary folders holding a copy of the script (its checkout is the folder above
``scripts/``, as in a clone), run with this venv's python so the embedded wheels are found. Nothing
here stops or reconfigures the machine's own PostgreSQL or Redis: the embedded ones live on ports
20000-29999 and are stopped by their own var/ folders.
"""

import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
SCRIPT = REPO_ROOT / "scripts" / "devservices.py"
START_TIMEOUT_S = 120

# What a command run by `exec` does to prove it has the checkout's own services: ask PostgreSQL for
# its data directory and Redis for its folder, and print both with the URLs it was given. With
# WAIT_FOR, it says it is ready and waits until that file exists (two commands overlapping).
PROBE = """
import os, sys, time
from pathlib import Path
import psycopg, redis
with psycopg.connect(os.environ["DATABASE_URL"], autocommit=True) as conn:
    data = conn.execute("SHOW data_directory").fetchone()[0]
folder = redis.Redis.from_url(os.environ["REDIS_URL"]).config_get("dir")["dir"]
print(f"DATABASE_URL={os.environ['DATABASE_URL']} REDIS_URL={os.environ['REDIS_URL']}")
print(f"pg_data={data} redis_dir={folder}", flush=True)
if os.environ.get("READY_FILE"):
    Path(os.environ["READY_FILE"]).touch()
if os.environ.get("WAIT_FOR"):
    deadline = time.monotonic() + 90
    while not Path(os.environ["WAIT_FOR"]).exists():
        if time.monotonic() > deadline:
            sys.exit("the other command never came")
        time.sleep(0.1)
sys.exit(int(os.environ.get("EXIT_CODE", "0")))
"""


def load(name: str, path: Path = SCRIPT) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations via sys.modules
    spec.loader.exec_module(module)  # importing has no side effects
    return module


@pytest.fixture(scope="module")
def devservices() -> Iterator[ModuleType]:
    module = load("devservices_under_test")
    yield module
    sys.modules.pop("devservices_under_test", None)


def service_env(**extra: str) -> dict[str, str]:
    """This environment without the suite's own service URLs and port choices."""
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "OTB_VAR_DIR")}
    env = {k: v for k, v in env.items() if not k.startswith("OTB_") or k == "OTB_REQUIRE_SERVICES"}
    env.update(extra)
    return env


class Checkout:
    """A folder laid out like a clone, as far as devservices is concerned."""

    def __init__(self, root: Path, devservices: ModuleType) -> None:
        self.root = root
        (root / "scripts").mkdir(parents=True)
        shutil.copy(SCRIPT, root / "scripts" / "devservices.py")
        self.paths = devservices.Paths(root)
        self.devservices = devservices

    def command(self, *args: str) -> list[str]:
        return [sys.executable, str(self.root / "scripts" / "devservices.py"), *args]

    def run(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.command(*args),
            cwd=self.root,
            env=service_env(**env),
            capture_output=True,
            text=True,
            timeout=START_TIMEOUT_S,
        )

    def start(self, *args: str, **env: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            self.command(*args),
            cwd=self.root,
            env=service_env(**env),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,  # a Ctrl-C sent to its group stays away from pytest
        )

    def running(self) -> dict[str, int | None]:
        return self.devservices.running_ports(self.paths)

    def pids(self) -> list[int]:
        pg = self.devservices.pg_state(self.paths)
        rd = self.devservices.redis_state(self.paths)
        return [pid for pid in (pg.pid, rd.pid) if pid is not None and self.devservices.pid_alive(pid)]

    def stop(self) -> None:
        if any(self.running().values()):
            subprocess.run(self.command("down"), cwd=self.root, env=service_env(), timeout=120, check=False)


@pytest.fixture(scope="module")
def checkouts(devservices: ModuleType) -> Iterator[list[Checkout]]:
    """Two checkouts, kept for the module (initdb runs once each); stopped after every test.

    Not under pytest's own temporary root: every pytest session on the machine resets that to 0700,
    which would lock PostgreSQL (run as another user when the suite runs as root) out of its data."""
    machine_services = {port: reachable(port) for port in (5432, 6379)}
    with tempfile.TemporaryDirectory(prefix="otb-checkouts-") as base:
        pair = [
            Checkout(Path(base) / "first" / "otb", devservices),
            Checkout(Path(base) / "second" / "otb", devservices),
        ]
        try:
            yield pair
        finally:
            for checkout in pair:
                checkout.stop()
    # the machine's own services are where they were
    assert {port: reachable(port) for port in (5432, 6379)} == machine_services


@pytest.fixture
def first(checkouts: list[Checkout]) -> Iterator[Checkout]:
    yield checkouts[0]
    leftover = checkouts[0].running()
    checkouts[0].stop()
    assert not any(leftover.values()), f"left running: {leftover}"


def reachable(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def held_port() -> socket.socket:
    """A listening socket on a free port of PostgreSQL's range: another program holding it."""
    for port in range(29999, 20000, -1):
        sock = socket.socket()
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            sock.close()
            continue
        sock.listen()
        return sock
    raise AssertionError("no free port to hold")


def probe_output(output: str) -> dict[str, str]:
    values: dict[str, str] = {}
    for line in output.splitlines():
        if line.startswith(("DATABASE_URL=", "pg_data=")):
            for part in line.split():
                key, _, value = part.partition("=")
                values[key] = value
    return values


# --------------------------------------------------------------------------------------------
# Two checkouts at the same time
# --------------------------------------------------------------------------------------------


def test_two_checkouts_run_their_own_services_at_the_same_time_and_both_stop(
    checkouts: list[Checkout], tmp_path: Path
) -> None:
    # given two checkouts with nothing running
    a, b = checkouts
    assert not any(a.running().values()) and not any(b.running().values())
    # when both run a command with their services at the same time (each waits for the other)
    ready_a, ready_b = tmp_path / "a.ready", tmp_path / "b.ready"
    procs = [
        a.start("exec", "--", sys.executable, "-c", PROBE, READY_FILE=str(ready_a), WAIT_FOR=str(ready_b)),
        b.start("exec", "--", sys.executable, "-c", PROBE, READY_FILE=str(ready_b), WAIT_FOR=str(ready_a)),
    ]
    outputs = [proc.communicate(timeout=START_TIMEOUT_S)[0] for proc in procs]
    # then both commands succeed, each with its own services on ports of its own
    assert [proc.returncode for proc in procs] == [0, 0], outputs
    seen = [probe_output(output) for output in outputs]
    for checkout, values, output in zip((a, b), seen, outputs, strict=True):
        assert Path(values["pg_data"]).resolve() == checkout.paths.pg_data.resolve()
        assert Path(values["redis_dir"]).resolve() == checkout.paths.redis_dir.resolve()
        # the ports are said, and recorded for manage.py
        pg_port = values["DATABASE_URL"].rsplit(":", 1)[1].split("/")[0]
        redis_port = values["REDIS_URL"].rsplit(":", 1)[1].split("/")[0]
        assert f"embedded PostgreSQL on 127.0.0.1:{pg_port} (started)" in output
        assert f"embedded Redis on 127.0.0.1:{redis_port} (started)" in output
        assert checkout.devservices.read_services_env(checkout.paths) == {
            "DATABASE_URL": values["DATABASE_URL"],
            "REDIS_URL": values["REDIS_URL"],
        }
        assert "stopped embedded PostgreSQL" in output
    assert seen[0]["DATABASE_URL"] != seen[1]["DATABASE_URL"]
    assert seen[0]["REDIS_URL"] != seen[1]["REDIS_URL"]
    # and when they end, nothing of either checkout runs any more
    assert a.running() == b.running() == {"postgres": None, "redis": None}
    assert a.pids() == b.pids() == []


# --------------------------------------------------------------------------------------------
# Lifetimes: exec, up/down, commands sharing the services
# --------------------------------------------------------------------------------------------


def test_exec_stops_its_services_when_the_command_fails(first: Checkout) -> None:
    # when a command run with the services fails
    result = first.run("exec", "--", sys.executable, "-c", PROBE, EXIT_CODE="3")
    # then its exit status is passed on, and the services it started are stopped
    assert result.returncode == 3, result.stdout + result.stderr
    assert "pg_data=" in result.stdout
    assert "stopped embedded PostgreSQL" in result.stderr
    assert first.running() == {"postgres": None, "redis": None}


def test_exec_stops_its_services_on_ctrl_c(first: Checkout, tmp_path: Path) -> None:
    # given a command running with the services
    ready = tmp_path / "ready"
    proc = first.start(
        "exec", "--", sys.executable, "-c", PROBE, READY_FILE=str(ready), WAIT_FOR=str(tmp_path / "never")
    )
    deadline = time.monotonic() + START_TIMEOUT_S
    while not ready.exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.stdout and proc.stdout.read()
        time.sleep(0.1)
    pids = first.pids()
    assert len(pids) == 2
    # when Ctrl-C reaches its process group (as from a terminal)
    os.killpg(proc.pid, signal.SIGINT)
    output = proc.communicate(timeout=120)[0]
    # then the command is interrupted and the services it started are stopped
    assert proc.returncode != 0
    assert "stopped embedded PostgreSQL" in output, output
    assert first.running() == {"postgres": None, "redis": None}
    assert not [pid for pid in pids if first.devservices.pid_alive(pid)]


def test_services_kept_by_up_outlive_commands_until_down(first: Checkout) -> None:
    # given the services started to be kept (make services)
    up = first.run("up")
    assert up.returncode == 0, up.stderr
    assert "kept running until `make services-down`" in up.stdout
    ports = first.running()
    # when a command uses them and ends
    result = first.run("exec", "--", sys.executable, "-c", PROBE)
    # then they are still running on the same ports
    assert result.returncode == 0, result.stderr
    assert "(already running)" in result.stderr and "stay running" in result.stderr
    assert first.running() == ports
    # and `down` (make services-down) stops them
    down = first.run("down")
    assert down.returncode == 0
    assert f"stopped embedded PostgreSQL (127.0.0.1:{ports['postgres']})" in down.stdout
    assert first.running() == {"postgres": None, "redis": None}


def test_services_stay_while_another_command_of_the_checkout_uses_them(
    first: Checkout, tmp_path: Path
) -> None:
    # given a long command using the services (make run, say)
    ready, release = tmp_path / "ready", tmp_path / "release"
    long = first.start(
        "exec", "--", sys.executable, "-c", PROBE, READY_FILE=str(ready), WAIT_FOR=str(release)
    )
    deadline = time.monotonic() + START_TIMEOUT_S
    while not ready.exists():
        assert long.poll() is None and time.monotonic() < deadline
        time.sleep(0.1)
    # when a second command (make test) runs and ends meanwhile
    short = first.run("exec", "--", sys.executable, "-c", PROBE)
    # then the services stay for the first one
    assert short.returncode == 0, short.stderr
    assert "left running: in use by another command of this checkout" in short.stderr
    assert all(first.running().values())
    # and stop when it ends
    release.touch()
    output = long.communicate(timeout=120)[0]
    assert long.returncode == 0, output
    assert "stopped embedded PostgreSQL" in output
    assert first.running() == {"postgres": None, "redis": None}


# --------------------------------------------------------------------------------------------
# Failed starts
# --------------------------------------------------------------------------------------------


def test_ports_held_by_other_programs_are_reported_together_and_nothing_starts(first: Checkout) -> None:
    # given both ports asked for explicitly held by another program
    with held_port() as pg_sock, held_port() as redis_sock:
        pg_port, redis_port = pg_sock.getsockname()[1], redis_sock.getsockname()[1]
        # when the services are asked for
        result = first.run("exec", "--", "true", OTB_PG_PORT=str(pg_port), OTB_REDIS_PORT=str(redis_port))
    # then one error names both ports and their variables, and nothing was started
    assert result.returncode == 1
    assert f"port 127.0.0.1:{pg_port} for PostgreSQL is in use by another program" in result.stderr
    assert f"OTB_REDIS_PORT={redis_port}" in result.stderr
    assert first.running() == {"postgres": None, "redis": None}


def test_a_redis_port_held_by_another_program_leaves_no_postgres_running(first: Checkout) -> None:
    # given Redis's port asked for explicitly and held by another program
    with held_port() as sock:
        port = sock.getsockname()[1]
        # when the services are asked for
        result = first.run("exec", "--", "true", OTB_REDIS_PORT=str(port))
    # then it fails naming the port, and no PostgreSQL was left running
    assert result.returncode == 1
    assert f"port 127.0.0.1:{port} for Redis is in use" in result.stderr
    assert first.running() == {"postgres": None, "redis": None}


def test_a_start_failing_after_postgres_started_stops_postgres(first: Checkout) -> None:
    # given a checkout where Redis cannot start (its log file cannot be written)
    first.paths.log_dir.mkdir(parents=True, exist_ok=True)
    first.paths.redis_log.unlink(missing_ok=True)
    first.paths.redis_log.mkdir()
    try:
        # when the services are asked for
        result = first.run("exec", "--", "true")
    finally:
        first.paths.redis_log.rmdir()
    # then the start fails clearly, and the PostgreSQL it had started is stopped again
    assert result.returncode == 1
    assert "stopping the PostgreSQL it started" in result.stderr, result.stderr
    assert "redis.log" in result.stderr
    assert first.running() == {"postgres": None, "redis": None}


# --------------------------------------------------------------------------------------------
# Port choice (no services started)
# --------------------------------------------------------------------------------------------


def test_ports_derive_from_the_checkout_path_and_skip_taken_ones(
    devservices: ModuleType, tmp_path: Path
) -> None:
    # given two checkouts
    one, other = devservices.Paths(tmp_path / "one"), devservices.Paths(tmp_path / "other")
    # then each has its own ports, the same every time, in their ranges
    assert devservices.derived_port(one, "postgres") == devservices.derived_port(one, "postgres")
    assert devservices.derived_port(one, "postgres") != devservices.derived_port(other, "postgres")
    assert 20000 <= devservices.derived_port(one, "postgres") < 25000
    assert 25000 <= devservices.derived_port(one, "redis") < 30000
    # and a port held by another program is skipped for the next free one
    port = devservices.derived_port(one, "postgres")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))
        sock.listen()
        assert devservices.derived_port(one, "postgres") != port


def test_recorded_ports_are_kept_while_free_and_the_variables_win(
    devservices: ModuleType, tmp_path: Path
) -> None:
    # given ports recorded in var/services.env
    paths = devservices.Paths(tmp_path)
    with held_port() as sock:
        taken = sock.getsockname()[1]
    devservices.write_services_env(paths, {"postgres": taken, "redis": 25001})
    assert devservices.recorded_port(paths, "postgres") == taken
    # then a free recorded port is kept, a variable wins over it
    choice = devservices.choose_port(paths, {}, "postgres", None, taken)
    assert (choice.port, choice.how) == (taken, "recorded")
    choice = devservices.choose_port(paths, {"OTB_PG_PORT": "21234"}, "postgres", None, taken)
    assert (choice.port, choice.how) == (21234, "explicit")
    # and a recorded port another program took is given up for a derived one
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", taken))
        holder.listen()
        choice = devservices.choose_port(paths, {}, "postgres", None, taken)
    assert choice.how == "derived" and choice.port != taken
    # a bad variable is named
    with pytest.raises(devservices.ServiceError, match="OTB_PG_PORT='x' is not a port number"):
        devservices.choose_port(paths, {"OTB_PG_PORT": "x"}, "postgres", None, None)


def test_status_reports_both_services(first: Checkout) -> None:
    result = first.run("status")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "embedded PostgreSQL" in result.stdout
    assert "embedded Redis" in result.stdout


def test_access_is_granted_before_initdb_for_a_checkout_under_a_0700_folder(
    devservices: ModuleType, tmp_path: Path
) -> None:
    # given a checkout inside a folder only its owner may enter (as root's home is), and PostgreSQL
    # run as another user
    home = tmp_path / "home"
    checkout = home / "otb"
    checkout.mkdir(parents=True)
    home.chmod(0o700)
    paths = devservices.Paths(checkout)
    other = devservices.RunAs(name="nobody", uid=65534, gid=65534)
    # when access is prepared (ensure_postgres does it before initdb, not only before a start)
    devservices.pg_grant_access(paths, other)
    # then the other user can cross every folder down to where the data directory will be created
    for folder in (home, checkout, paths.var):
        assert folder.stat().st_mode & 0o001, folder
