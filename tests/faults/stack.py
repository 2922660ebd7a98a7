"""A whole otb-fleet of its own for fault tests: a private PostgreSQL and a private Redis (the embedded
ones of scripts/devservices.py, on free ports under a temporary folder) that a test may stop, kill and
restart without touching the machine's services, the ASGI server, a Celery worker and beat, and
simulated boxes (``otb-agent simulate``: the real agent code, one per box, in one process).

Shared by tests/faults/ and bench/faults.py."""

from __future__ import annotations

import contextlib
import csv
import importlib.util
import json
import os
import secrets
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

ROOT = Path(__file__).resolve().parents[2]
AGENT = str(Path(sys.executable).with_name("otb-agent"))


def _devservices() -> Any:
    spec = importlib.util.spec_from_file_location(
        "devservices_for_faults", ROOT / "scripts" / "devservices.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(check: Callable[[], Any], timeout: float, what: str, interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except Exception as error:  # a check may hit the service being restarted
            last = error
        else:
            if last:
                return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what} (last: {last!r})")


@dataclass
class Stack:
    root: Path
    devservices: Any = field(init=False)
    pg_port: int = field(default_factory=free_port)
    redis_port: int = field(default_factory=free_port)
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)
    web_port: int = field(default_factory=free_port)
    simulator_lines: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.devservices = _devservices()
        self.paths = self.devservices.Paths(self.root)
        (self.root / "logs").mkdir(parents=True, exist_ok=True)

    # -- services -----------------------------------------------------------------------------------
    @property
    def database_url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.pg_port}/otb"

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.redis_port}/0"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.web_port}"

    def postgres_start(self) -> None:
        choice = self.devservices.PortChoice("postgres", self.pg_port, "explicit")
        self.devservices.ensure_postgres(self.paths, {"OTB_PG_PORT": str(self.pg_port)}, choice)

    def postgres_stop(self) -> None:
        self.devservices.pg_stop(self.paths, self.devservices.pg_run_as())

    def redis_start(self) -> None:
        choice = self.devservices.PortChoice("redis", self.redis_port, "explicit")
        self.devservices.ensure_redis(self.paths, {"OTB_REDIS_PORT": str(self.redis_port)}, choice)

    def redis_stop(self) -> None:
        self.devservices.redis_stop(self.paths)

    @property
    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "DATABASE_URL": self.database_url,
            "REDIS_URL": self.redis_url,
            "OTB_ENV": "development",
            "DEBUG": "0",
            "LOG_LEVEL": "WARNING",
            "OTB_TELEMETRY_INTERVAL_S": "1",
            "OTB_HEARTBEAT_INTERVAL_S": "5",
            "OTB_ROLLOUT_TICK_S": "2",
            # the notification sweep every 2 s, for deliveries overdue by 5 s (a minute / 2 minutes in
            # production), so a killed worker's deliveries come back within the test's patience
            "OTB_NOTIFY_SWEEP_S": "2",
            "OTB_NOTIFY_STALE_AFTER_S": "5",
            "OTB_WEBHOOK_ALLOW_PRIVATE": "1",  # the tests' webhook receiver listens on 127.0.0.1
            "OTB_CACHE_PREFIX": "otb-faults",
            "OTB_CHANNELS_PREFIX": "otb-faults",
            "PYTHONUNBUFFERED": "1",
        }

    def up(self, *, celery: bool = True) -> None:
        self.postgres_start()
        self.redis_start()
        subprocess.run([sys.executable, "manage.py", "migrate", "-v0"], cwd=ROOT, env=self.env, check=True)
        self.web_start()
        if celery:
            self.worker_start()
            self.spawn(
                "beat",
                [
                    sys.executable,
                    "-m",
                    "celery",
                    "-A",
                    "config",
                    "beat",
                    "--loglevel",
                    "WARNING",
                    "--schedule",
                    str(self.root / "celerybeat-schedule"),
                ],
            )

    def worker_start(self, loglevel: str = "WARNING") -> None:
        self.spawn(
            "worker",
            [sys.executable, "-m", "celery", "-A", "config", "worker", "-Q", "default,telemetry,rollouts",
             "-c", "2", "--loglevel", loglevel],
        )  # fmt: skip

    def spawn(self, name: str, command: list[str], **kwargs: Any) -> subprocess.Popen:
        if name in self.processes and self.processes[name].poll() is None:
            self.kill(name, signal.SIGTERM)  # one per name: a process replaced here is never left running
        out = (self.root / "logs" / f"{name}.log").open("ab")
        process = subprocess.Popen(
            command,
            cwd=ROOT,
            env=kwargs.pop("env", self.env),
            stdout=kwargs.pop("stdout", out),
            stderr=subprocess.STDOUT if "stderr" not in kwargs else kwargs.pop("stderr"),
            start_new_session=True,
            **kwargs,
        )
        self.processes[name] = process
        return process

    def web_start(self) -> None:
        self.spawn(
            "web",
            [
                sys.executable,
                "-m",
                "uvicorn",
                "config.asgi:application",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.web_port),
                "--ws-max-size",
                "65536",
                "--no-access-log",
                "--log-level",
                "warning",
                "--timeout-graceful-shutdown",
                "5",
            ],
        )
        wait_for(self.healthy, 30, "the web process")

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.base_url}/healthz", timeout=2) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        process = self.processes.pop(name, None)
        if process is not None and process.poll() is None:
            try:
                os.killpg(process.pid, sig)
            except ProcessLookupError:
                return
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(5)

    def down(self) -> None:
        for name in list(self.processes):
            self.kill(name, signal.SIGTERM)
        for stop in (self.redis_stop, self.postgres_stop):
            with contextlib.suppress(Exception):  # best effort: the folder goes with the test
                stop()

    # -- boxes ----------------------------------------------------------------------------------------
    def import_boxes(self, count: int, prefix: str) -> list[dict[str, str]]:
        rows = [
            {
                "serial": f"{prefix}-{index:05d}",
                "model": "OTB-SIM",
                "mac": "",
                "factory_secret": secrets.token_hex(12),
                "claim_code": secrets.token_hex(4).upper(),
            }
            for index in range(1, count + 1)
        ]
        path = self.root / f"{prefix}.csv"
        with path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        subprocess.run(
            [sys.executable, "manage.py", "import_boxes", str(path)],
            cwd=ROOT,
            env=self.env,
            check=True,
            capture_output=True,
        )
        return rows

    def simulate(self, csv_path: Path, interval: float = 0.5) -> None:
        """Run the boxes of ``csv_path``; progress lines land in ``simulator_lines``."""
        process = self.spawn(
            "simulator",
            [
                AGENT,
                "simulate",
                "--server",
                self.base_url,
                "--boxes-csv",
                str(csv_path),
                "--state-dir",
                str(self.root / "boxes"),
                "--interval",
                str(interval),
                "--progress-interval",
                "1",
                "--ramp",
                "2",
                "--log-level",
                "warning",
            ],
            stdout=subprocess.PIPE,
            stderr=(self.root / "logs" / "simulator.log").open("ab"),
        )

        def read() -> None:
            assert process.stdout is not None
            for line in process.stdout:
                try:
                    self.simulator_lines.append(json.loads(line))
                except ValueError:
                    continue

        threading.Thread(target=read, daemon=True).start()

    def progress(self) -> dict[str, Any]:
        return self.simulator_lines[-1] if self.simulator_lines else {}

    def stop_simulator(self) -> dict[str, Any]:
        self.kill("simulator", signal.SIGTERM)
        time.sleep(0.2)
        return self.progress()

    # -- what was acked, what was stored ---------------------------------------------------------------
    def agent_acked(self, serial: str) -> set[int]:
        """Sequences the box's agent generated and no longer holds (acked by the server)."""
        path = self.root / "boxes" / serial / "agent.db"
        if not path.exists():
            return set()
        with sqlite3.connect(path) as db:
            try:
                pending = {row[0] for row in db.execute("SELECT seq FROM telemetry")}
                row = db.execute("SELECT value FROM meta WHERE key = 'next_seq'").fetchone()
            except sqlite3.OperationalError:  # a box stopped before its store was created
                return set()
        next_seq = int(row[0]) if row else max(pending | {0}) + 1
        return set(range(1, next_seq)) - pending

    def stored(self) -> dict[str, list[int]]:
        """serial -> stored telemetry sequences (with repeats, if any)."""
        with psycopg.connect(self.database_url) as conn:
            rows = conn.execute(
                "SELECT b.serial, s.seq FROM telemetry_box_sample s JOIN fleet_box b ON b.id = s.box_id"
                " WHERE s.idx = 0 ORDER BY 1, 2"
            ).fetchall()
        out: dict[str, list[int]] = {}
        for serial, seq in rows:
            out.setdefault(serial, []).append(seq)
        return out

    def lost_and_duplicated(self, serials: list[str]) -> tuple[int, int, int]:
        """(acked but not stored, stored twice, acked in all) over the boxes."""
        stored = self.stored()
        lost = duplicated = acked_total = 0
        for serial in serials:
            acked = self.agent_acked(serial)
            seqs = stored.get(serial, [])
            acked_total += len(acked)
            lost += len(acked - set(seqs))
            duplicated += len(seqs) - len(set(seqs))
        return lost, duplicated, acked_total
