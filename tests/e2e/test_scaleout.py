"""Production shape, for real: Debian's nginx with TLS (a certificate made here) running the shipped
site file (deploy/nginx/otb-fleet.conf, only ports and paths substituted) in front of two uvicorn
processes started with the shipped unit's flags (deploy/systemd/otb-fleet-web@.service), sharing the
Redis channel layer and PostgreSQL.

- a box's second session on the other process replaces the first (4002); a command created through
  one process reaches a session held by the other at once; a portal live socket on one process gets
  telemetry ingested by the other;
- real agents over wss:// through nginx survive `kill -9` of one process (back within 30 s) and a
  rolling restart, while HTTP requests through nginx keep answering, and every telemetry sequence
  is stored exactly once.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import json
import os
import re
import shlex
import shutil
import signal
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import websockets
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from django.db import connection
from django.test import Client
from prometheus_client.parser import text_string_to_metric_families

from fleet.telemetry.models import BoxStatus
from tests.conftest import FACTORY_SECRET
from tests.e2e.browser import wait_until
from tests.e2e.test_agent_e2e import agent_status, database_url, free_port, stored_seqs

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

ROOT = Path(__file__).resolve().parents[2]
AGENT = str(Path(sys.executable).with_name("otb-agent"))
SITE = ROOT / "deploy" / "nginx" / "otb-fleet.conf"
WEB_UNIT = ROOT / "deploy" / "systemd" / "otb-fleet-web@.service"


def make_certificate(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "otb-fleet test")])
    now = dt.datetime.now(dt.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


def _replace(text: str, old: str, new: str) -> str:
    assert old in text, f"the shipped nginx site no longer has {old!r}: update this test with it"
    return text.replace(old, new)


def render_site(
    *,
    web_ports: list[int],
    http_port: int,
    https_port: int,
    cert: Path,
    key: Path,
    static: Path,
    access_log: Path,
) -> str:
    """The shipped site with this test's ports and paths (each substitution must apply)."""
    text = SITE.read_text()
    text = _replace(text, "/var/log/nginx/otb-fleet.access.log", str(access_log))
    text = _replace(text, "server 127.0.0.1:8001 max_fails=1 fail_timeout=5s;", "")
    text = _replace(
        text,
        "server 127.0.0.1:8002 max_fails=1 fail_timeout=5s;",
        "\n    ".join(f"server 127.0.0.1:{port} max_fails=1 fail_timeout=5s;" for port in web_ports),
    )
    text = _replace(text, "listen 80;", f"listen 127.0.0.1:{http_port};")
    text = _replace(text, "listen [::]:80;", "")
    text = _replace(text, "listen 443 ssl http2;", f"listen 127.0.0.1:{https_port} ssl http2;")
    text = _replace(text, "listen [::]:443 ssl http2;", "")
    text = _replace(text, "/etc/ssl/otb-fleet/fullchain.pem", str(cert))
    text = _replace(text, "/etc/ssl/otb-fleet/privkey.pem", str(key))
    return _replace(text, "/var/lib/otb-fleet/static/", f"{static}/")


class Nginx:
    def __init__(self, directory: Path, site: str) -> None:
        self.directory = directory
        for name in ("body", "proxy", "fastcgi", "uwsgi", "scgi", "logs"):
            (directory / name).mkdir(parents=True, exist_ok=True)
        (directory / "site.conf").write_text(site)
        (directory / "nginx.conf").write_text(
            f"""user root;
worker_processes 1;
pid {directory}/nginx.pid;
error_log {directory}/logs/error.log warn;
events {{ worker_connections 8192; }}
http {{
    include /etc/nginx/mime.types;
    access_log {directory}/logs/access.log;
    client_body_temp_path {directory}/body;
    proxy_temp_path {directory}/proxy;
    fastcgi_temp_path {directory}/fastcgi;
    uwsgi_temp_path {directory}/uwsgi;
    scgi_temp_path {directory}/scgi;
    include {directory}/site.conf;
}}
"""
        )
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        command = [nginx, "-p", str(self.directory), "-c", str(self.directory / "nginx.conf")]
        check = subprocess.run([*command, "-t"], capture_output=True, text=True, check=False)
        assert check.returncode == 0, check.stderr
        self.process = subprocess.Popen([*command, "-g", "daemon off;"])

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGQUIT)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


def web_command(port: int) -> list[str]:
    """The ExecStart of the shipped unit, for this port and this checkout's Python."""
    unit = WEB_UNIT.read_text().replace("\\\n", " ")
    line = next(line for line in unit.splitlines() if line.startswith("ExecStart="))
    argv = shlex.split(line.removeprefix("ExecStart=").replace("%i", str(port)))
    assert argv[0].endswith("/uvicorn"), argv
    return [sys.executable, "-m", "uvicorn", *argv[1:]]


class Web:
    def __init__(self, port: int, env: dict[str, str], log: Path) -> None:
        self.port, self.env, self.log = port, env, log
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        with self.log.open("a") as out:
            self.process = subprocess.Popen(
                web_command(self.port), cwd=ROOT, env={**self.env, "OTB_PROCESS_NAME": f"web-{self.port}"},
                stdout=out, stderr=out,
            )  # fmt: skip
        wait_until(self.healthy, timeout=30, message=f"uvicorn :{self.port} did not become healthy")

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=1) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[dict[str, Any]]:
    assert shutil.which("nginx") or Path("/usr/sbin/nginx").exists(), (
        "Debian's nginx is required (apt-get install nginx)"
    )
    cert, key = make_certificate(tmp_path)
    env = {
        **os.environ,
        "DATABASE_URL": database_url(),
        "OTB_ENV": "test",
        "OTB_TELEMETRY_INTERVAL_S": "1",
        "OTB_HEARTBEAT_INTERVAL_S": "5",
        "OTB_LIVE_BROADCAST_INTERVAL_S": "1",
        "LOG_LEVEL": "WARNING",
    }
    env.pop("OTB_TEST_DB_NAME", None)
    webs = [Web(free_port(), env, tmp_path / f"web-{index}.log") for index in (1, 2)]
    http_port, https_port = free_port(), free_port()
    static = tmp_path / "static"
    static.mkdir()
    (static / "probe.txt").write_text("static ok")
    nginx = Nginx(
        tmp_path / "nginx",
        render_site(
            web_ports=[web.port for web in webs], http_port=http_port, https_port=https_port,
            cert=cert, key=key, static=static, access_log=tmp_path / "nginx" / "logs" / "site.log",
        ),
    )  # fmt: skip
    try:
        for web in webs:
            web.start()
        nginx.start()
        base = f"https://127.0.0.1:{https_port}"
        context = ssl.create_default_context(cafile=str(cert))
        try:
            wait_until(lambda: _get(base + "/healthz", context)[0] == 200, timeout=15)
        except AssertionError:
            logs = (tmp_path / "nginx" / "logs" / "error.log").read_text()[-2000:]
            raise AssertionError(
                f"nginx did not answer: {_get(base + '/healthz', context)}\n{logs}"
            ) from None
        yield {"webs": webs, "base": base, "ssl": context, "cert": cert, "env": env, "http_port": http_port}
    finally:
        nginx.stop()
        for web in webs:
            web.stop(signal.SIGKILL)


def _get(url: str, context: ssl.SSLContext, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=5, context=context) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()
    except OSError:
        return 0, b""


def hello() -> dict[str, Any]:
    return {
        "type": "hello", "v": 1, "agent_version": "0.1.0", "firmware_version": "1.0.0", "model": "OTB-v2c",
        "applied_config_hash": None, "boot_id": "boot-1", "uptime_s": 100, "dropped_samples": 0,
    }  # fmt: skip


def telemetry(seq: int) -> dict[str, Any]:
    wan = {
        "iface": "wan1", "label": "WAN1", "kind": "fiber", "up": True, "rtt_ms": 10.0, "jitter_ms": 1.0,
        "loss_pct": 0.0, "rx_bps": 1000, "tx_bps": 500, "public_ip": None, "subflows": 1,
    }  # fmt: skip
    sample = {
        "ts": time.time(), "cpu_pct": 1.0, "mem_pct": 10.0, "load1": 0.1, "uptime_s": 100, "tunnel_up": True,
        "conntrack": 1, "rx_bps": 1000, "tx_bps": 500, "wans": [wan],
    }  # fmt: skip
    return {"type": "telemetry", "seq": seq, "samples": [sample]}


async def _frames_until(ws: Any, wanted: str, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        frame = json.loads(await asyncio.wait_for(ws.recv(), max(0.1, deadline - time.monotonic())))
        if frame.get("type") == wanted:
            return dict(frame)


def test_sessions_commands_and_live_views_cross_processes(
    stack: dict[str, Any], people: Any, box_factory: Any, agent_token_factory: Any, api_token_factory: Any
) -> None:
    box = box_factory(organization=people.org, config_hash="c" * 64)
    token = agent_token_factory(box)
    api_token = api_token_factory(people.admin, people.org)
    browser = Client()
    browser.force_login(people.viewer)
    session_cookie = browser.cookies["sessionid"].value
    web_a, web_b = stack["webs"]
    before = {name: scrape_sum(stack["webs"], name, **labels) for name, labels in SCRAPED}

    async def scenario() -> dict[str, Any]:
        agent = {"Authorization": f"Bearer {token}"}
        first = await websockets.connect(f"ws://127.0.0.1:{web_a.port}/ws/agent/", additional_headers=agent)
        await first.send(json.dumps(hello()))
        await _frames_until(first, "welcome", 5)
        second = await websockets.connect(f"ws://127.0.0.1:{web_b.port}/ws/agent/", additional_headers=agent)
        await second.send(json.dumps(hello()))
        await _frames_until(second, "welcome", 5)
        try:
            await asyncio.wait_for(first.wait_closed(), 5)
        finally:
            replaced_code = first.close_code

        # a command created through process A reaches the session on process B at once
        started = time.monotonic()
        created = await asyncio.to_thread(
            _post_json,
            f"http://127.0.0.1:{web_a.port}/api/v1/boxes/{box.pk}/commands/",
            {"kind": "diagnostics"},
            api_token,
        )
        command = await _frames_until(second, "command", 5)
        command_latency = time.monotonic() - started

        # a portal live socket on process A gets what process B ingests
        portal = await websockets.connect(
            f"ws://127.0.0.1:{web_a.port}/ws/live/",
            additional_headers={
                "Cookie": f"sessionid={session_cookie}",
                "Origin": f"http://127.0.0.1:{web_a.port}",
            },
        )
        await _frames_until(portal, "ready", 5)
        await portal.send(json.dumps({"type": "subscribe", "box": str(box.pk)}))
        await _frames_until(portal, "subscribed", 5)
        live: dict[str, Any] = {}
        acks = 0
        for seq in range(1, 6):
            await second.send(json.dumps(telemetry(seq)))
            await _frames_until(second, "ack", 5)
            acks += 1
            try:
                live = json.loads(await asyncio.wait_for(portal.recv(), 1.5))
                if live:
                    break
            except TimeoutError:
                continue
        await portal.close()
        await second.close()
        return {
            "replaced_code": replaced_code,
            "created": created,
            "command": command,
            "command_latency": command_latency,
            "live": live,
            "acks": acks,
        }

    result = asyncio.run(scenario())
    time.sleep(0.5)  # the last close is counted when the process sees it
    after = {name: scrape_sum(stack["webs"], name, **labels) for name, labels in SCRAPED}
    grew = {name: after[name] - before[name] for name in after}
    # /metrics of the two processes, summed, tell what the test did
    assert grew["otb_telemetry_messages_acked_total"] == result["acks"], grew
    assert grew["otb_telemetry_messages_received_total"] == result["acks"], grew
    assert grew["otb_agent_sessions_opened_total"] == 2, grew
    assert grew["otb_agent_sessions_closed_total"] >= 1, grew
    assert result["replaced_code"] == 4002
    assert result["command"]["id"] == result["created"]["id"]
    assert result["command_latency"] < 3, result["command_latency"]
    assert result["live"], "the portal socket on process A got nothing ingested by process B"
    assert str(box.pk) in json.dumps(result["live"])


SCRAPED = [
    ("otb_telemetry_messages_acked_total", {}),
    ("otb_telemetry_messages_received_total", {}),
    ("otb_agent_sessions_opened_total", {}),
    ("otb_agent_sessions_closed_total", {"code": "4002"}),
]


def scrape_sum(webs: list[Web], name: str, **labels: str) -> float:
    """The sum over the processes of one sample of their /metrics (scraped directly, as Prometheus does)."""
    total = 0.0
    for web in webs:
        with urllib.request.urlopen(f"http://127.0.0.1:{web.port}/metrics", timeout=5) as response:
            text = response.read().decode()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                    total += sample.value
    return total


def _post_json(url: str, body: Any, token: str) -> dict[str, Any]:
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return dict(json.loads(response.read()))


class Poller(threading.Thread):
    """Requests through nginx every 0.1 s (a page, the health check, a static file), counting failures."""

    def __init__(self, base: str, context: ssl.SSLContext) -> None:
        super().__init__(daemon=True)
        self.base, self.context = base, context
        self.done = threading.Event()
        self.ok = 0
        self.failures: list[tuple[str, int]] = []

    def run(self) -> None:
        paths = ["/accounts/login/", "/healthz", "/static/probe.txt"]
        index = 0
        while not self.done.is_set():
            path = paths[index % len(paths)]
            status, _ = _get(self.base + path, self.context)
            if status == 200:
                self.ok += 1
            else:
                self.failures.append((path, status))
            index += 1
            time.sleep(0.1)


def test_agents_through_nginx_survive_a_killed_process_and_a_rolling_restart(
    stack: dict[str, Any], box_factory: Any, tmp_path: Path
) -> None:
    boxes = [box_factory() for _ in range(4)]
    env = {**os.environ, "OTB_AGENT_CA_FILE": str(stack["cert"])}
    agents: list[subprocess.Popen] = []
    poller = Poller(stack["base"], stack["ssl"])
    try:
        for box in boxes:
            state = tmp_path / box.serial
            enroll = subprocess.run(
                [AGENT, "enroll", "--server", stack["base"], "--serial", box.serial,
                 "--secret", FACTORY_SECRET, "--state-dir", str(state)],
                capture_output=True, text=True, timeout=60, env=env, check=False,
            )  # fmt: skip
            assert enroll.returncode == 0, enroll.stdout + enroll.stderr
            with (tmp_path / f"{box.serial}.log").open("w") as log:
                command = [AGENT, "run", "--state-dir", str(state), "--collector", "simulated"]
                command += [
                    "--telemetry-interval",
                    "0.5",
                    "--no-probe",
                    "--backoff-base",
                    "0.2",
                    "--backoff-cap",
                    "2",
                ]
                agents.append(subprocess.Popen(command, stdout=log, stderr=log, env=env))
        every_box_streams = _streaming(boxes)
        wait_until(every_box_streams, timeout=30, message="agents did not stream through nginx")
        poller.start()

        # kill -9 of one process: its agents come back through nginx to the other within 30 s
        web_a, web_b = stack["webs"]
        web_a.stop(signal.SIGKILL)
        killed_at = time.monotonic()
        wait_until(_streaming(boxes), timeout=30, message="agents did not come back within 30 s of the kill")
        back_after = time.monotonic() - killed_at
        web_a.start()
        # nginx skips a process for fail_timeout (5 s) after it refused a connection: a rolling
        # restart waits that long before taking the next one down (docs/deploy.md waits 10 s)
        time.sleep(6)

        # rolling restart, one process at a time, gracefully
        for web in (web_a, web_b):
            web.stop(signal.SIGTERM)
            web.start()
            wait_until(_streaming(boxes), timeout=30, message="agents did not stream after a restart")
            time.sleep(6)
        poller.done.set()
        poller.join(5)

        for agent in agents:
            agent.send_signal(signal.SIGTERM)
        for agent in agents:
            agent.wait(15)
    finally:
        poller.done.set()
        for agent in agents:
            if agent.poll() is None:
                agent.kill()
                agent.wait(5)

    assert back_after <= 30
    assert poller.ok > 20 and poller.failures == [], poller.failures
    for box in boxes:
        status = agent_status(tmp_path / box.serial)
        rows = stored_seqs(box.pk)
        seqs = [row[0] for row in rows]
        acked = status.get("last_acked_seq", 0)
        assert acked > 10
        assert seqs[:acked] == list(range(1, acked + 1)), f"{box.serial}: gaps or duplicates in {seqs}"
        assert all(count == distinct for _, count, distinct in rows), f"{box.serial}: a sample stored twice"


def _max_seqs(boxes: list[Any]) -> dict[Any, int]:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT box_id, max(seq) FROM telemetry_box_sample WHERE box_id = ANY(%s) GROUP BY box_id",
            [[box.pk for box in boxes]],
        )
        return dict(cursor.fetchall())


def _streaming(boxes: list[Any]) -> Any:
    """A check: every box stored at least 3 new sequences since the check was made, and is online."""
    baseline = _max_seqs(boxes)

    def check() -> bool:
        now = _max_seqs(boxes)
        grew = all(now.get(box.pk, 0) >= baseline.get(box.pk, 0) + 3 for box in boxes)
        return grew and BoxStatus.objects.filter(box__in=boxes, online=True).count() == len(boxes)

    return check


def test_the_shipped_web_unit_trusts_forwarded_addresses_from_nginx_only(stack: dict[str, Any]) -> None:
    """X-Forwarded-For from nginx (which overwrites any client's own) is the client address; a client
    sending the header straight to uvicorn from elsewhere would not be trusted (127.0.0.1 only)."""
    argv = web_command(8001)
    assert argv[argv.index("--forwarded-allow-ips") + 1] == "127.0.0.1"
    site = SITE.read_text()
    assert "proxy_set_header X-Forwarded-For   $remote_addr;" in site
    assert re.search(r"proxy_read_timeout (\d+)s;", site.split("location /ws/")[1])
    ws_timeout = int(re.search(r"proxy_read_timeout (\d+)s;", site.split("location /ws/")[1]).group(1))  # type: ignore[union-attr]
    assert ws_timeout >= 3 * 30, "the websocket idle timeout must outlast three heartbeats"
    # plain HTTP redirects to HTTPS, the health check answers on both
    request = urllib.request.Request(f"http://127.0.0.1:{stack['http_port']}/boxes/")
    opener = urllib.request.build_opener(NoRedirect)
    try:
        opener.open(request, timeout=5)
        status = 200
    except urllib.error.HTTPError as error:
        status = error.code
    assert status == 301
    # a body over the limit is refused by nginx before it reaches a process
    status, _ = _post_raw(stack["base"] + "/api/v1/boxes/claim", b"x" * (2 * 1024 * 1024), stack["ssl"])
    assert status == 413


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def _post_raw(url: str, body: bytes, context: ssl.SSLContext) -> tuple[int, bytes]:
    request = urllib.request.Request(
        url, data=body, method="POST", headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=10, context=context) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()
