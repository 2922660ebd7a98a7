#!/usr/bin/env python3
"""`make run`: the whole otb-fleet stack in one terminal.

1. ``devservices up`` (embedded PostgreSQL/Redis unless DATABASE_URL/REDIS_URL are set);
2. ``manage.py migrate`` and ``manage.py seed_demo`` (prints the demo login);
3. children: ASGI web server, Celery worker, Celery beat, and - once ``/healthz`` answers - a
   simulated fleet (``otb-agent simulate``). Their output is prefixed with ``[name]``.

Ctrl-C / SIGTERM stops the children (SIGTERM, SIGKILL after 10 s) and the embedded services this
run started itself, and exits 0. If a child exits on its own, everything is shut down and the exit
status is non-zero.

Environment: OTB_PORT (8000), OTB_WEB_WORKERS (1), plus whatever devservices.py reads.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
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
        # Bounded stop: after closing every session (1012), a consumer's channel-layer receive can
        # take up to the Redis read timeout (30 s) to give up (redis-py's cleanup of a cancelled
        # blocking read); nothing is pending by then, so do not wait for it.
        "--timeout-graceful-shutdown",
        "5",
        "--log-level",
        "info",
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


def beat_command(python: str) -> list[str]:
    schedule = str(Path("var") / "celerybeat-schedule")
    return [python, "-m", "celery", "-A", "config", "beat", "--loglevel", "INFO", "--schedule", schedule]


def simulator_state_dir(env: Mapping[str, str]) -> Path:
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
    return Path("var") / "sim" / key


def simulator_command(agent: Path, port: int, state_dir: Path) -> list[str]:
    return [
        str(agent),
        "simulate",
        "--server",
        f"http://{HOST}:{port}",
        "--boxes-csv",
        str(Path("var") / "demo-boxes.csv"),
        "--state-dir",
        str(state_dir),
    ]


def manage_commands(python: str) -> list[list[str]]:
    return [
        [python, "manage.py", "migrate", "--noinput"],
        [python, "manage.py", "seed_demo"],
    ]


def find_agent_executable(root: Path = REPO_ROOT) -> Path | None:
    for candidate in (root / ".venv" / "bin" / "otb-agent", Path(sys.executable).parent / "otb-agent"):
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


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
    stopping: bool = False


@dataclass
class Supervisor:
    """Starts children in their own process groups and copies their output with a prefix."""

    env: dict[str, str]
    cwd: Path
    children: list[Child] = field(default_factory=list)
    _out_lock: threading.Lock = field(default_factory=threading.Lock)

    def _pump(self, name: str, stream: IO[str]) -> None:
        prefix = f"[{name}] "
        for line in stream:
            with self._out_lock:
                sys.stdout.write(prefix + line if line.endswith("\n") else prefix + line + "\n")
                sys.stdout.flush()
        stream.close()

    def start(self, name: str, cmd: Sequence[str]) -> Child:
        say(f"starting {name}: {' '.join(cmd)}")
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
            target=self._pump, args=(name, proc.stdout), name=f"pump-{name}", daemon=True
        )
        reader.start()
        child = Child(name, proc, reader)
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
        for child in reversed(self.children):
            child.stopping = True
            if child.proc.poll() is None:
                say(f"stopping {child.name} (pid {child.proc.pid})")
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


def run_step(cmd: Sequence[str], env: Mapping[str, str], cwd: Path, stop: StopFlag) -> int:
    """Run a one-off command in the foreground (output passes straight through)."""
    say(f"running: {' '.join(cmd)}")
    proc = subprocess.Popen(list(cmd), cwd=cwd, env=dict(env), stdin=subprocess.DEVNULL)
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


def wait_for_health(url: str, sup: Supervisor, stop: StopFlag, timeout: float = HEALTH_TIMEOUT_S) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if stop.requested or sup.exited() is not None:
            return False
        if is_healthy(url):
            return True
        stop.event.wait(0.5)
    return False


def print_banner(port: int) -> None:
    base = f"http://{HOST}:{port}"
    lines = [
        "",
        "=" * 64,
        f"  portal    {base}/",
        f"  API docs  {base}/api/docs/",
        f"  admin     {base}/admin/",
        "  Ctrl-C stops everything",
        "=" * 64,
        "",
    ]
    print("\n".join(lines), flush=True)


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def child_environment(paths: devservices.Paths) -> dict[str, str]:
    env = devservices.services_environ(paths, os.environ)
    env.update(
        {
            "DJANGO_SETTINGS_MODULE": "config.settings",
            "OTB_ENV": "development",
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


def supervise(env: dict[str, str], stop: StopFlag) -> int:
    """Migrate, seed, run the children until a signal (0) or an unexpected exit (non-zero)."""
    python = sys.executable
    port = env_int(env, "OTB_PORT", DEFAULT_PORT)
    workers = env_int(env, "OTB_WEB_WORKERS", 1)

    for cmd in manage_commands(python):
        if stop.requested:
            return 0
        rc = run_step(cmd, env, REPO_ROOT, stop)
        if stop.requested:
            return 0
        if rc != 0:
            say(f"{' '.join(cmd[1:3])} failed with exit code {rc}")
            return rc or 1

    sup = Supervisor(env=env, cwd=REPO_ROOT)
    try:
        sup.start("web", web_command(python, port, workers))
        sup.start("worker", worker_command(python))
        sup.start("beat", beat_command(python))

        if wait_for_health(f"http://{HOST}:{port}/healthz", sup, stop):
            print_banner(port)
            agent = find_agent_executable()
            csv = REPO_ROOT / "var" / "demo-boxes.csv"
            if agent is None:
                say("warning: otb-agent executable not found in .venv/bin; fleet simulator skipped")
            elif not csv.exists():
                say(f"warning: {csv.relative_to(REPO_ROOT)} missing (seed_demo writes it); simulator skipped")
            else:
                state_dir = simulator_state_dir(env)
                (REPO_ROOT / state_dir).mkdir(parents=True, exist_ok=True)
                sup.start("sim", simulator_command(agent, port, state_dir))
        elif not stop.requested and sup.exited() is None:
            say(
                f"warning: web did not answer /healthz within {HEALTH_TIMEOUT_S:.0f} s; simulator not started"
            )
            print_banner(port)

        while not stop.requested:
            dead = sup.exited()
            if dead is not None:
                say(f"{dead.name} exited unexpectedly (exit code {dead.proc.returncode}); shutting down")
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
    paths = devservices.Paths(REPO_ROOT)
    try:
        results = devservices.up(paths)
    except devservices.ServiceError as exc:
        print(f"devservices: error: {exc}", file=sys.stderr, flush=True)
        return 1
    started = [r.name for r in results if r.started_here]
    rc = 1
    try:
        rc = supervise(child_environment(paths), stop)
    finally:
        if started:
            say(f"stopping embedded services started by this run: {', '.join(started)}")
            try:
                devservices.down(paths, services=started)
            except devservices.ServiceError as exc:
                print(f"devservices: error: {exc}", file=sys.stderr, flush=True)
                rc = rc or 1
    return rc


if __name__ == "__main__":
    sys.exit(main())
