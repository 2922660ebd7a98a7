#!/usr/bin/env python3
"""`make run`: the whole otb-fleet stack in one terminal.

1. this checkout's embedded PostgreSQL/Redis (``devservices.session``; unless DATABASE_URL /
   REDIS_URL are set), on the checkout's own ports;
2. ``manage.py migrate`` (output in ``var/log/migrate.log``) and ``manage.py seed_demo`` (prints the
   demo logins);
3. children: ASGI web server, Celery worker, Celery beat, and - once ``/healthz`` answers - a
   simulated fleet (``otb-agent simulate``). Everything each writes goes to ``var/log/<name>.log``;
   the console gets only their warnings and errors (prefixed with ``[name]``), then a final banner
   with the addresses and the demo logins.

Ctrl-C / SIGTERM stops the children (SIGTERM, SIGKILL after 10 s) and the embedded services this
run started (unless ``make services`` keeps them or another command of this checkout uses them),
and exits 0. If a child exits on its own, its last log lines are shown, everything is shut down and
the exit status is non-zero.

Environment: OTB_PORT (8000, or when 8000 is taken a free port derived from the checkout's path),
OTB_WEB_WORKERS (1), plus whatever devservices.py reads.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO

SCRIPTS_DIR = Path(__file__).resolve().parent
if str(SCRIPTS_DIR) not in sys.path:  # importable from elsewhere (tests) as well as run as a script
    sys.path.insert(0, str(SCRIPTS_DIR))

import devservices  # noqa: E402

REPO_ROOT = SCRIPTS_DIR.parent
HOST = "127.0.0.1"
DEFAULT_PORT = 8000
HEALTH_TIMEOUT_S = 60.0
TERMINATE_GRACE_S = 10.0
CELERY_QUEUES = "default,telemetry,rollouts"
LOG_TAIL_LINES = 20
SIM_CONNECT_WAIT_S = 30.0  # the banner waits this long for the simulated boxes to connect


# --------------------------------------------------------------------------------------------
# Commands (one function each so they can be swapped)
# --------------------------------------------------------------------------------------------


def web_command(python: str, port: int, workers: int) -> list[str]:
    """The ASGI server. Swap this function to try another server (e.g. granian)."""
    return [
        python,
        "-m",
        "uvicorn",
        "config.asgi:application",
        "--host",
        HOST,
        "--port",
        str(port),
        "--workers",
        str(workers),
        "--ws-max-size",
        "65536",
        # stock OverTheBox boxes' idle polls answered in the parser callback (otbcompat/http.py)
        "--http",
        "otbcompat.http:OtbHttpToolsProtocol",
        # Bounded stop: after closing every session (1012), a consumer's channel-layer receive can
        # take up to the Redis read timeout (30 s) to give up (redis-py's cleanup of a cancelled
        # blocking read); nothing is pending by then, so do not wait for it.
        "--timeout-graceful-shutdown",
        "5",
        "--log-level",
        "info",  # access log included: it goes to var/log/web.log, not to the console
    ]


def worker_command(python: str) -> list[str]:
    return [
        python,
        "-m",
        "celery",
        "-A",
        "config",
        "worker",
        "-Q",
        CELERY_QUEUES,
        "-c",
        "2",
        "--loglevel",
        "INFO",
    ]


def beat_command(python: str, var: Path) -> list[str]:
    schedule = str(var / "celerybeat-schedule")
    return [python, "-m", "celery", "-A", "config", "beat", "--loglevel", "INFO", "--schedule", schedule]


def simulator_state_dir(env: Mapping[str, str], var: Path) -> Path:
    """``var/sim/<database identity>``: the simulated boxes keep their agent tokens there, and tokens
    belong to one database. Keyed by the cluster's system identifier and the database's oid, so a
    recreated or different database (another DATABASE_URL, a dropped and created one) starts with
    freshly enrolled boxes instead of tokens the server has never seen (which stop the simulator)."""
    import hashlib

    try:
        import psycopg

        with psycopg.connect(env["DATABASE_URL"], connect_timeout=5, autocommit=True) as conn:
            oid = conn.execute("SELECT oid FROM pg_database WHERE datname = current_database()").fetchone()
            try:  # superusers only; the embedded and the local development servers allow it
                system = conn.execute("SELECT system_identifier FROM pg_control_system()").fetchone()
            except psycopg.Error:
                system = None
        parts = [env["DATABASE_URL"], str(oid[0] if oid else ""), str(system[0] if system else "")]
        key = hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]
    except Exception as exc:  # the simulator still runs; a stale state is only a risk
        say(f"warning: could not identify the database for the simulator state ({exc})")
        key = "default"
    return var / "sim" / key


def simulator_command(agent: Path, port: int, csv: Path, state_dir: Path) -> list[str]:
    return [
        str(agent),
        "simulate",
        "--server",
        f"http://{HOST}:{port}",
        "--boxes-csv",
        str(csv),
        "--state-dir",
        str(state_dir),
    ]


def migrate_command(python: str) -> list[str]:
    return [python, "manage.py", "migrate", "--noinput"]


def seed_command(python: str) -> list[str]:
    return [python, "manage.py", "seed_demo"]


def find_agent_executable(root: Path = REPO_ROOT) -> Path | None:
    for candidate in (root / ".venv" / "bin" / "otb-agent", Path(sys.executable).parent / "otb-agent"):
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


# --------------------------------------------------------------------------------------------
# The web port
# --------------------------------------------------------------------------------------------


@dataclass
class WebPort:
    """The web server's port, held (bound and listening) by devrun from the moment it is chosen until
    the server is started, so another checkout's `make run` starting meanwhile sees it taken."""

    port: int
    claim: socket.socket
    note: str | None  # what to tell the person about the choice

    def release(self) -> None:
        self.claim.close()


def claim_port(port: int) -> socket.socket | None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    # SO_REUSEADDR as the server binds (old connections in TIME_WAIT do not count); listening makes
    # the claim exclusive even against other SO_REUSEADDR binds.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((HOST, port))
        sock.listen(1)
    except OSError:
        sock.close()
        return None
    return sock


def claim_web_port(env: Mapping[str, str], paths: devservices.Paths, default: int = DEFAULT_PORT) -> WebPort:
    """OTB_PORT when set (refused with a clear error when taken); else 8000 when free; else a free
    port of the checkout's own, derived from its path (30000-32699), and a note saying so."""
    try:
        explicit = devservices.env_port(env, "OTB_PORT")
    except devservices.ServiceError as exc:
        raise SystemExit(f"devrun: error: {exc}") from None
    if explicit is not None:
        claim = claim_port(explicit)
        if claim is None:
            raise SystemExit(
                f"devrun: error: OTB_PORT={explicit}, but {HOST}:{explicit} is in use by another program; "
                "choose another port, or unset OTB_PORT to have a free one chosen"
            )
        return WebPort(explicit, claim, None)
    claim = claim_port(default)
    if claim is not None:
        return WebPort(default, claim, None)
    for port in devservices.port_candidates(paths, "web"):
        claim = claim_port(port)
        if claim is not None:
            note = (
                f"port {default} is in use (another checkout's `make run`, or another program): "
                f"serving on {HOST}:{port} instead (set OTB_PORT to choose)"
            )
            return WebPort(port, claim, note)
    raise SystemExit(f"devrun: error: {devservices.no_free_port('web')}")


def listening_inodes(port: int) -> set[str]:
    """The socket inodes listening on a TCP port (Linux /proc/net/tcp; empty elsewhere)."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if len(fields) > 9 and fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(fields[9])
    return inodes


def serves_port(pid: int, port: int) -> bool:
    """Whether process pid holds the socket listening on port: the server answering there is ours,
    not another checkout's that took the port. True where the OS cannot tell (no /proc)."""
    if not Path("/proc/net/tcp").exists():
        return True
    wanted = {f"socket:[{inode}]" for inode in listening_inodes(port)}
    try:
        fds = list(Path(f"/proc/{pid}/fd").iterdir())
    except OSError:
        return False
    for fd in fds:
        with contextlib.suppress(OSError):
            if os.readlink(fd) in wanted:
                return True
    return False


# --------------------------------------------------------------------------------------------
# What reaches the console
# --------------------------------------------------------------------------------------------

LOUD_LEVELS = frozenset({"warning", "error", "critical", "fatal"})
_CELERY_RECORD = re.compile(r"^\[[^\]]*?:\s*([A-Z]+)/[\w-]+\]")
_CELERY_BANNER = re.compile(r"^\s*-{5,} celery@")
_UVICORN_RECORD = re.compile(r"^([A-Z]+):\s")
_PYTHON_WARNING = re.compile(r"^\S.*:\d+: [A-Za-z]*Warning: ")
# Expected where `make run` runs as root (a container, a fresh VM): kept in the log, not shown.
EXPECTED_WARNINGS = ("SecurityWarning: You're running the worker with superuser privileges",)


def line_level(line: str) -> str | None:
    """The level a log line opens a record with, lower case; None for a line that continues the
    record before it (a traceback, a banner) or is no log line at all."""
    stripped = line.strip()
    if stripped.startswith("{"):  # the server's and the agent's JSON lines
        try:
            entry = json.loads(stripped)
        except ValueError:
            return None
        if isinstance(entry, dict):
            return str(entry.get("level") or entry.get("levelname") or "info").lower()
        return None
    for pattern in (_CELERY_RECORD, _UVICORN_RECORD):
        match = pattern.match(line)
        if match:
            return match.group(1).lower()
    if _CELERY_BANNER.match(line):
        return "info"
    if line.startswith("Traceback (most recent call last)"):
        return "error"
    if _PYTHON_WARNING.match(line):
        return "info" if any(expected in line for expected in EXPECTED_WARNINGS) else "warning"
    return None


class ConsoleFilter:
    """Which lines of a child go to the console as well as to its log: warnings, errors and the lines
    that continue them (tracebacks). Lines before the first record (Celery's banner) stay in the log."""

    def __init__(self) -> None:
        self.loud = False

    def __call__(self, line: str) -> bool:
        level = line_level(line)
        if level is not None:
            self.loud = level in LOUD_LEVELS
        return self.loud


class SimulatorProgress:
    """Follows the simulator's progress lines (``{"event": "progress", "boxes": 20, "connected": 20,
    ...}``) to tell, in the banner, whether the simulated fleet is connected."""

    def __init__(self) -> None:
        self.boxes = 0
        self.connected = 0
        self.unauthorized = 0
        self.all_connected = threading.Event()

    def __call__(self, line: str) -> None:
        if not line.startswith("{"):
            return
        try:
            entry = json.loads(line)
        except ValueError:
            return
        if not isinstance(entry, dict) or "connected" not in entry:
            return
        with contextlib.suppress(TypeError, ValueError):
            self.boxes, self.connected = int(entry.get("boxes") or 0), int(entry["connected"])
            self.unauthorized = int(entry.get("unauthorized") or 0)
        if self.boxes and self.connected >= self.boxes:
            self.all_connected.set()

    @property
    def all_refused(self) -> bool:
        """Every box's agent token was refused (revoked, or issued by another database)."""
        return bool(self.boxes) and self.unauthorized >= self.boxes and not self.connected

    def describe(self) -> str:
        if self.boxes and self.connected >= self.boxes:
            return f"{self.boxes} simulated boxes connected"
        if self.boxes:
            return f"{self.connected} of {self.boxes} simulated boxes connected so far"
        return "simulated boxes starting"


class SimulatorConsoleFilter(ConsoleFilter):
    """The simulator's warnings and errors, except refused agent tokens: devrun handles those (it
    enrolls the boxes again, or shows the log's last lines if the simulator stops)."""

    HANDLED = frozenset({"unauthorized"})

    def __call__(self, line: str) -> bool:
        if line.startswith("{"):
            with contextlib.suppress(ValueError):
                entry = json.loads(line)
                if isinstance(entry, dict):
                    fields = entry.get("fields")
                    code = fields.get("code") if isinstance(fields, dict) else None
                    if entry.get("event") in self.HANDLED or code in self.HANDLED:
                        self.loud = False
                        return False
        return super().__call__(line)


@dataclass
class Simulator:
    """The simulated fleet: its process, its progress, and one fresh enrollment when every token it
    holds is refused (its state belongs to a database that revoked or never issued them)."""

    agent: Path
    port: int
    csv: Path
    state_dir: Path
    progress: SimulatorProgress = field(default_factory=SimulatorProgress)
    child: Child | None = None
    enrolled_again: bool = False

    def start(self, sup: Supervisor) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.progress = SimulatorProgress()
        command = simulator_command(self.agent, self.port, self.csv, self.state_dir)
        self.child = sup.start("sim", command, watch=self.progress, console=SimulatorConsoleFilter())

    def recover(self, sup: Supervisor, dead: Child) -> bool:
        """When it stopped because every token was refused: enroll the boxes again, once."""
        dead.reader.join(timeout=2)
        if dead is not self.child or self.enrolled_again or not self.progress.all_refused:
            return False
        say(
            f"the simulated boxes' agent tokens ({shown(self.state_dir)}) are refused by this server "
            "(revoked, or issued for another database): enrolling the boxes again"
        )
        dead.stopping = True
        shutil.rmtree(self.state_dir, ignore_errors=True)
        self.enrolled_again = True
        self.start(sup)
        return True

    def wait_connected(self, sup: Supervisor, stop: StopFlag, timeout: float = SIM_CONNECT_WAIT_S) -> None:
        deadline = time.monotonic() + timeout
        while not (self.progress.all_connected.is_set() or stop.requested) and time.monotonic() < deadline:
            dead = sup.exited()
            if dead is not None and not self.recover(sup, dead):
                return
            stop.event.wait(0.3)


# --------------------------------------------------------------------------------------------
# Output and process supervision
# --------------------------------------------------------------------------------------------


def say(message: str) -> None:
    print(f"devrun: {message}", flush=True)


def env_int(env: Mapping[str, str], key: str, default: int) -> int:
    raw = env.get(key, "").strip()
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        raise SystemExit(f"devrun: {key}={raw!r} is not an integer") from None


def shown(path: Path) -> str:
    """A path as the person typing in the checkout would write it."""
    try:
        return str(path.relative_to(REPO_ROOT))
    except ValueError:
        return str(path)


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        content = path.read_text(errors="replace").splitlines()
    except OSError:
        return f"    (no log at {shown(path)})"
    return "\n".join(f"    {line}" for line in content[-lines:]) or f"    ({shown(path)} is empty)"


class StopFlag:
    """Set by SIGINT/SIGTERM/SIGHUP; a second signal, a second or more after the first, asks for an
    immediate kill. (One Ctrl-C reaches this process twice: from the terminal, and from make passing
    it on. Those two must not count as "kill now", or the children never get their graceful stop.)"""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.force = threading.Event()
        self.signal_name = ""
        self.first_at = 0.0

    def handler(self, signum: int, _frame: FrameType | None) -> None:
        if self.event.is_set():
            if time.monotonic() - self.first_at >= 1.0:
                self.force.set()
            return
        self.signal_name = signal.Signals(signum).name
        self.first_at = time.monotonic()
        self.event.set()

    def install(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, self.handler)

    @property
    def requested(self) -> bool:
        return self.event.is_set()


@dataclass
class Child:
    name: str
    proc: subprocess.Popen[str]
    reader: threading.Thread
    log_path: Path
    stopping: bool = False


@dataclass
class Supervisor:
    """Starts children in their own process groups; each one's output goes to its log file, and its
    warnings and errors also to the console with a prefix."""

    env: dict[str, str]
    cwd: Path
    log_dir: Path
    children: list[Child] = field(default_factory=list)
    # Set while stopping: what children say on their way out (cancelled tasks) stays in the logs.
    quiet: threading.Event = field(default_factory=threading.Event)
    _out_lock: threading.Lock = field(default_factory=threading.Lock)

    def _pump(
        self,
        name: str,
        stream: IO[str],
        log_file: IO[str],
        watch: Callable[[str], None] | None,
        loud: Callable[[str], bool],
    ) -> None:
        prefix = f"[{name}] "
        with log_file:
            for line in stream:
                text = line if line.endswith("\n") else line + "\n"
                log_file.write(text)
                log_file.flush()
                if watch is not None:
                    watch(text)
                if loud(text) and not self.quiet.is_set():
                    with self._out_lock:
                        sys.stdout.write(prefix + text)
                        sys.stdout.flush()
        stream.close()

    def start(
        self,
        name: str,
        cmd: Sequence[str],
        watch: Callable[[str], None] | None = None,
        console: Callable[[str], bool] | None = None,
    ) -> Child:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"{name}.log"
        log_file = open(log_path, "a", encoding="utf-8")  # noqa: SIM115 - closed by the pump thread
        log_file.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} devrun: {' '.join(cmd)}\n")
        log_file.flush()
        proc = subprocess.Popen(
            list(cmd),
            cwd=self.cwd,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            bufsize=1,
            process_group=0,  # Ctrl-C reaches only devrun, which stops children in order
        )
        assert proc.stdout is not None
        reader = threading.Thread(
            target=self._pump,
            args=(name, proc.stdout, log_file, watch, console or ConsoleFilter()),
            name=f"pump-{name}",
            daemon=True,
        )
        reader.start()
        child = Child(name, proc, reader, log_path)
        self.children.append(child)
        return child

    def exited(self) -> Child | None:
        """The first child that exited while not being stopped, if any."""
        for child in self.children:
            if not child.stopping and child.proc.poll() is not None:
                return child
        return None

    def stop_all(self, grace: float = TERMINATE_GRACE_S, force: threading.Event | None = None) -> None:
        """SIGTERM every child (newest first), SIGKILL the process groups of those still alive after grace."""
        self.quiet.set()
        running = [c for c in reversed(self.children) if c.proc.poll() is None]
        if running:
            say(f"stopping {', '.join(c.name for c in running)}")
        for child in reversed(self.children):
            child.stopping = True
            if child.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    child.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(c.proc.poll() is None for c in self.children):
            if force is not None and force.is_set():
                break
            time.sleep(0.1)
        forced = force is not None and force.is_set()
        for child in self.children:
            if child.proc.poll() is None:
                why = "second signal" if forced else f"did not stop within {grace:.0f} s"
                say(f"{child.name}: {why}: SIGKILL")
            # Also reaps leftovers (worker pool processes, uvicorn workers) of an exited leader.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(child.proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.proc.wait(timeout=5)
            child.reader.join(timeout=2)


def run_step(
    cmd: Sequence[str], env: Mapping[str, str], cwd: Path, stop: StopFlag, output: IO[str] | None = None
) -> int:
    """Run a one-off command in the foreground: its output to `output` (None: straight through)."""
    proc = subprocess.Popen(
        list(cmd),
        cwd=cwd,
        env=dict(env),
        stdin=subprocess.DEVNULL,
        stdout=output,
        stderr=subprocess.STDOUT if output is not None else None,
    )
    while True:
        try:
            return proc.wait(timeout=0.2)
        except subprocess.TimeoutExpired:
            if stop.requested:
                proc.terminate()
                try:
                    return proc.wait(timeout=TERMINATE_GRACE_S)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    return proc.wait()


def is_healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:  # noqa: S310 - fixed http://127.0.0.1 URL
            return 200 <= int(resp.status) < 300
    except (urllib.error.URLError, OSError, ValueError):
        return False


def wait_for_health(
    web: Child, port: int, sup: Supervisor, stop: StopFlag, timeout: float = HEALTH_TIMEOUT_S
) -> bool:
    """Until our web server answers /healthz on its port (an answer from a server that is not ours,
    on a port taken meanwhile, does not count: ours then exits with the bind error)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if stop.requested or sup.exited() is not None:
            return False
        if serves_port(web.proc.pid, port) and is_healthy(f"http://{HOST}:{port}/healthz"):
            return True
        stop.event.wait(0.5)
    return False


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def demo_logins(seed_output: str) -> list[tuple[str, str]]:
    """The sign-ins seed_demo printed after "demo fleet ready": (who, "email / password ...")."""
    logins: list[tuple[str, str]] = []
    ready = False
    for raw in seed_output.splitlines():
        line = _ANSI.sub("", raw)
        if line.strip() == "demo fleet ready":
            ready = True
            continue
        who, sep, what = line.strip().partition(":")
        if ready and line.startswith(" ") and sep and " / " in what:
            logins.append((who.strip(), what.strip()))
    return logins


def banner_lines(
    port: int, logins: Sequence[tuple[str, str]], log_dir: Path, names: Sequence[str], fleet: str | None
) -> list[str]:
    base = f"http://{HOST}:{port}"
    lines = ["", "=" * 72, f"  portal    {base}/"]
    lines += [f"  {who:<9} {what}" for who, what in logins] or [
        "  logins    see the output of `python manage.py seed_demo` above"
    ]
    lines += [f"  fleet     {fleet}"] if fleet else []
    lines += [
        f"  API docs  {base}/api/docs/",
        f"  admin     {base}/admin/",
        f"  logs      {shown(log_dir)}/{{{','.join(names)}}}.log (warnings and errors also show here)",
        "  Ctrl-C stops everything",
        "=" * 72,
        "",
    ]
    return lines


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def child_environment(results: Sequence[devservices.ServiceResult], port: int) -> dict[str, str]:
    env = devservices.services_environ(results, os.environ)
    env.update(
        {
            "DJANGO_SETTINGS_MODULE": "config.settings",
            "OTB_ENV": "development",
            "OTB_PORT": str(port),  # seed_demo prints the address the portal really has
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


def prepare(env: dict[str, str], paths: devservices.Paths, stop: StopFlag) -> list[tuple[str, str]] | int:
    """Migrate (output in var/log/migrate.log) and seed; the demo logins, or an exit status."""
    python = sys.executable
    migrate_log = paths.log_dir / "migrate.log"
    paths.log_dir.mkdir(parents=True, exist_ok=True)
    say(f"migrating the database (output in {shown(migrate_log)})")
    with open(migrate_log, "w", encoding="utf-8") as output:
        rc = run_step(migrate_command(python), env, REPO_ROOT, stop, output)
    if stop.requested:
        return 0
    if rc != 0:
        say(f"manage.py migrate failed with exit code {rc}; last lines of {shown(migrate_log)}:")
        print(log_tail(migrate_log), flush=True)
        return rc
    say("seeding the demo data (manage.py seed_demo)")
    proc = subprocess.run(
        seed_command(python), cwd=REPO_ROOT, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True
    )
    print((proc.stdout + proc.stderr).rstrip(), flush=True)
    if stop.requested:
        return 0
    if proc.returncode != 0:
        say(f"manage.py seed_demo failed with exit code {proc.returncode}")
        return proc.returncode
    return demo_logins(proc.stdout)


def supervise(env: dict[str, str], paths: devservices.Paths, web_port: WebPort, stop: StopFlag) -> int:
    """Migrate, seed, run the children until a signal (0) or an unexpected exit (non-zero)."""
    python = sys.executable
    workers = env_int(env, "OTB_WEB_WORKERS", 1)
    prepared = prepare(env, paths, stop)
    if isinstance(prepared, int):
        return prepared
    if stop.requested:
        return 0
    logins = prepared

    port = web_port.port
    sup = Supervisor(env=env, cwd=REPO_ROOT, log_dir=paths.log_dir)
    try:
        web_port.release()  # the server binds it now
        web = sup.start("web", web_command(python, port, workers))
        sup.start("worker", worker_command(python))
        sup.start("beat", beat_command(python, paths.var))
        say(f"started web, worker and beat (their output: {shown(paths.log_dir)}/<name>.log)")

        fleet: str | None = None
        simulator: Simulator | None = None
        if wait_for_health(web, port, sup, stop):
            agent = find_agent_executable()
            csv = paths.var / "demo-boxes.csv"
            if agent is None:
                say("warning: otb-agent executable not found in .venv/bin; fleet simulator skipped")
            elif not csv.exists():
                say(f"warning: {shown(csv)} missing (seed_demo writes it); simulator skipped")
            else:
                simulator = Simulator(agent, port, csv, simulator_state_dir(env, paths.var))
                say("starting the simulated fleet")
                simulator.start(sup)
                simulator.wait_connected(sup, stop)
                fleet = f"{simulator.progress.describe()} (otb-agent simulate)"
        elif not stop.requested and sup.exited() is None:
            say(
                f"warning: web did not answer /healthz within {HEALTH_TIMEOUT_S:.0f} s; simulator not started"
            )
        if not stop.requested and sup.exited() is None:
            names = list(dict.fromkeys(c.name for c in sup.children))
            print("\n".join(banner_lines(port, logins, paths.log_dir, names, fleet)), flush=True)

        while not stop.requested:
            dead = sup.exited()
            if dead is not None and simulator is not None and simulator.recover(sup, dead):
                continue
            if dead is not None:
                dead.reader.join(timeout=2)
                say(
                    f"{dead.name} exited unexpectedly (exit code {dead.proc.returncode}); "
                    f"last lines of {shown(dead.log_path)}:"
                )
                print(log_tail(dead.log_path), flush=True)
                say("shutting down")
                return 1
            stop.event.wait(0.3)
        say(f"{stop.signal_name} received; shutting down")
        return 0
    finally:
        sup.stop_all(force=stop.force)


def main() -> int:
    os.chdir(REPO_ROOT)
    stop = StopFlag()
    stop.install()
    paths = devservices.Paths.of_checkout()
    web_port = claim_web_port(os.environ, paths)
    try:
        with devservices.session(paths) as results:
            if web_port.note:
                say(web_port.note)
            return supervise(child_environment(results, web_port.port), paths, web_port, stop)
    except devservices.ServiceError as exc:
        print(f"devservices: error: {exc}", file=sys.stderr, flush=True)
        return 1
    finally:
        web_port.release()


if __name__ == "__main__":
    sys.exit(main())
