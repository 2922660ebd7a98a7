"""Fixtures of the browser tests: a real ASGI server (uvicorn, HTTP + websockets) on a free loopback
port against the test database, Debian's Chromium driven by Playwright, and the on-box agent's
simulator as a separate process.

Chromium is never downloaded: the system's ``/usr/bin/chromium`` is used (installed with apt when it
is missing and we may). With ``OTB_REQUIRE_SERVICES=1`` a missing browser fails the test.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import pytest

# Playwright's sync API runs an event loop in this thread; the ORM calls the tests make between
# browser steps are plain synchronous code, so Django's async-safety guard is lifted for them.
os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("OTB_CHROMIUM", "/usr/bin/chromium")
SCREENSHOTS = ROOT / "artifacts" / "screenshots"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def _missing(reason: str) -> NoReturn:
    if os.environ.get("OTB_REQUIRE_SERVICES") == "1":
        pytest.fail(reason)
    pytest.skip(reason)


def chromium_path() -> str:
    """The system Chromium, installed from Debian's packages if missing and we are root."""
    if not Path(CHROMIUM).exists() and shutil.which("apt-get") and os.geteuid() == 0:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=False, env=env, capture_output=True, timeout=600)
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "chromium"],
            check=False,
            env=env,
            capture_output=True,
            timeout=900,
        )
    if not Path(CHROMIUM).exists():
        _missing(f"Chromium is not installed at {CHROMIUM} (apt-get install chromium)")
    return CHROMIUM


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class LiveServer:
    url: str
    process: subprocess.Popen
    log_path: Path

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def _server_env(database_name: str) -> dict[str, str]:
    from django.conf import settings

    database = settings.DATABASES["default"]
    user = database.get("USER") or "postgres"
    password = f":{database['PASSWORD']}" if database.get("PASSWORD") else ""
    host = database.get("HOST") or "127.0.0.1"
    port = database.get("PORT") or 5432
    return {
        **os.environ,
        "DATABASE_URL": f"postgresql://{user}{password}@{host}:{port}/{database_name}",
        "OTB_TEST_DB_NAME": "",
        # the same mode as this process's settings (password hashers, secrets, debug)
        "OTB_ENV": settings.OTB_ENV,
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "OTB_LIVE_BROADCAST_INTERVAL_S": "1",
        "OTB_TELEMETRY_INTERVAL_S": "1",
        "OTB_PROCESS_NAME": "otb-e2e-uvicorn",
        "PYTHONUNBUFFERED": "1",
    }


def asgi_server_start(log_path: Path, env_extra: dict[str, str] | None = None) -> LiveServer:
    """uvicorn serving config.asgi (HTTP and websockets) on a free port, against the test database,
    with ``env_extra`` on top of the environment; waits until it answers. Stop it with
    ``asgi_server_stop``."""
    from django.conf import settings

    port = free_port()
    env = {**_server_env(settings.DATABASES["default"]["NAME"]), **(env_extra or {})}
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "config.asgi:application",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--log-level",
                "warning",
                "--ws",
                "websockets",
                "--http",  # as in production (deploy/systemd): idle OTB polls answered in the parser
                "otbcompat.http:OtbHttpToolsProtocol",
            ],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    server = LiveServer(url=f"http://127.0.0.1:{port}", process=process, log_path=log_path)
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(f"{server.url}/accounts/login/", timeout=2) as response:
                if response.status == 200:
                    break
        except OSError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"uvicorn did not start:\n{server.log_tail()}")
        time.sleep(0.2)
    return server


def asgi_server_stop(server: LiveServer) -> None:
    server.process.terminate()
    try:
        server.process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait(timeout=5)


@pytest.fixture(scope="session")
def asgi_server(django_db_setup: Any, django_db_blocker: Any, tmp_path_factory: Any) -> Iterator[LiveServer]:
    """uvicorn serving config.asgi (HTTP and websockets) on a free port, against the test database."""
    server = asgi_server_start(tmp_path_factory.mktemp("uvicorn") / "uvicorn.log")
    yield server
    asgi_server_stop(server)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One Chromium per test module. Not per session: Playwright's sync API keeps an event loop
    running in this thread while it lives, which would break every async test that runs later."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("the playwright package is not installed (pip install -e '.[dev]')")
    executable = chromium_path()
    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_ARGS)
        yield instance
        instance.close()


def page_open(browser: Any, url: str, viewport: dict[str, int] | None = None) -> Any:
    """A fresh browser context (no cookies) and its page on ``url``; console errors are collected on
    ``page.errors``. Close it with ``page.context.close()``."""
    context = browser.new_context(base_url=url, viewport=viewport or {"width": 1360, "height": 900})
    context.set_default_timeout(15000)
    tab = context.new_page()
    tab.errors = []
    tab.on("pageerror", lambda error: tab.errors.append(str(error)))
    tab.on(
        "console",
        lambda message: tab.errors.append(message.text) if message.type == "error" else None,
    )
    return tab


@pytest.fixture
def page(browser: Any, asgi_server: LiveServer, request: Any) -> Iterator[Any]:
    """A fresh browser context (no cookies) per test; console errors are collected on ``page.errors``."""
    tab = page_open(browser, asgi_server.url)
    yield tab
    tab.context.close()


def screenshot(page: Any, name: str) -> Path:
    """Save the page as artifacts/screenshots/<name>.png (the artifact of each browser test)."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def sign_in(page: Any, email: str, password: str) -> None:
    page.goto("/accounts/login/")
    page.get_by_label("Email or username").fill(email)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url("**/boxes/**")


@dataclass
class SimulatedAgent:
    process: subprocess.Popen
    log_path: Path

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)


def agent_start(
    server: LiveServer, *, serial: str, token: str, workdir: Path, wans: str = ""
) -> SimulatedAgent:
    """``otb-agent simulate`` for one already enrolled box, sending telemetry every second; ``wans``
    gives its links (``"wan:fiber wan2:lte"``), else the simulator draws them from the serial."""
    credentials = workdir / "credentials.jsonl"
    credentials.write_text(json.dumps({"serial": serial, "agent_token": token, "wans": wans}) + "\n")
    log_path = workdir / f"agent-{time.monotonic_ns()}.log"
    agent_bin = Path(sys.executable).with_name("otb-agent")
    command = [str(agent_bin)] if agent_bin.exists() else [sys.executable, "-m", "otb_agent.cli"]
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [
                *command,
                "simulate",
                "--server",
                server.url,
                "--credentials-file",
                str(credentials),
                "--boxes",
                "1",
                "--interval",
                "1",
                "--memory-buffer",
                "--state-dir",
                str(workdir / "state"),
                "--log-level",
                "info",
            ],
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    return SimulatedAgent(process=process, log_path=log_path)


def wait_until(condition: Any, *, timeout: float = 20.0, interval: float = 0.25, message: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(message or "condition not met in time")
