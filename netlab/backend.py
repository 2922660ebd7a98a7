"""The otb-fleet backend of the lab: the ASGI server (listening only on the lab's ``ctl`` address)
and a Celery worker and beat, with the caller's PostgreSQL and Redis. Started and stopped by PID."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from netlab.netns import LabError, inside
from netlab.topology import CTL_ADDRESS, CTL_PORT

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Backend:
    namespace: str  # the lab's ctl namespace
    env: dict[str, str]
    log_dir: Path
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://{CTL_ADDRESS}:{CTL_PORT}"

    def _spawn(self, name: str, command: list[str]) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with (self.log_dir / f"{name}.log").open("ab") as log:
            self.processes[name] = subprocess.Popen(
                command, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )

    def start(self, *, celery: bool = True) -> None:
        python = sys.executable
        self._spawn("web", [python, "-m", "netlab.serve", self.namespace, CTL_ADDRESS, str(CTL_PORT)])
        if celery:
            self._spawn(
                "worker",
                [python, "-m", "celery", "-A", "config", "worker", "-c", "1", "--loglevel", "WARNING",
                 "-Q", self.env.get("OTB_CELERY_QUEUES", "default,telemetry,rollouts")],
            )  # fmt: skip
            self._spawn(
                "beat",
                [python, "-m", "celery", "-A", "config", "beat", "--loglevel", "WARNING",
                 "--schedule", str(self.log_dir / "celerybeat-schedule")],
            )  # fmt: skip
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.healthy():
                return
            if self.processes["web"].poll() is not None:
                break
            time.sleep(0.3)
        raise LabError(f"the backend did not become healthy; see {self.log_dir / 'web.log'}")

    def healthy(self) -> bool:
        # Asked from inside the ctl namespace: the host's namespace has no route to the lab.
        try:
            with inside(self.namespace):
                request = urllib.request.urlopen(f"{self.url}/healthz", timeout=1)
            with request as response:
                return bool(response.status == 200)
        except (OSError, urllib.error.URLError):
            return False

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(5)
        self.processes.clear()


class Api:
    """A small JSON client of the backend's HTTP API, speaking from a lab namespace."""

    def __init__(self, base_url: str, namespace: str, token: str | None = None) -> None:
        self.base_url = base_url
        self.namespace = namespace
        self.token = token

    def call(self, method: str, path: str, body: Any = None, *, expect: tuple[int, ...] = (200, 201)) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(f"{self.base_url}{path}", data=data, method=method)
        request.add_header("Accept", "application/json")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        try:
            with inside(self.namespace):
                response = urllib.request.urlopen(request, timeout=20)
            with response:
                status, text = response.status, response.read().decode()
        except urllib.error.HTTPError as error:
            status, text = error.code, error.read().decode()
        if status not in expect:
            raise LabError(f"{method} {path} -> {status}: {text[:500]}")
        return json.loads(text) if text else None

    def get(self, path: str, **kw: Any) -> Any:
        return self.call("GET", path, **kw)

    def post(self, path: str, body: Any = None, **kw: Any) -> Any:
        return self.call("POST", path, body, **kw)

    def put(self, path: str, body: Any = None, **kw: Any) -> Any:
        return self.call("PUT", path, body, **kw)
