"""The speed test end to end on loopback: a real uvicorn server (config.asgi: a2wsgi + Django) against the
test database and Redis, and the agent's own HTTP client.

The upload goes through the same stack as production: several times the 1 MB body limit streams
through, a box's second test is refused while the first one's bytes are still on their way, and a
client that goes away mid-upload frees the box's slot at once. Then a `speed_test` command created
with the service reaches a real agent session over the websocket, and its result lands in the
database.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from django.core.cache import cache
from otb_agent import httpapi
from otb_agent.agent import Agent
from otb_agent.backoff import Backoff
from otb_agent.collectors import Collector
from otb_agent.host import HostSystem
from otb_agent.store import MemoryStore

from fleet.commands.models import Command
from fleet.commands.services import command_create
from fleet.commands.speedtest import BUSY_RETRY_AFTER_S, SpeedtestSlot
from fleet.core.audit import Actor
from tests.e2e.browser import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


def open_upload(url: str, token: str, declared: int, first: bytes) -> socket.socket:
    """Start an upload by hand: the headers and the first bytes of the body, the rest left unsent."""
    parts = urlsplit(url)
    sock = socket.create_connection((parts.hostname, parts.port), timeout=30)
    head = (
        f"POST /api/v1/agent/speedtest HTTP/1.1\r\nHost: {parts.netloc}\r\n"
        f"Authorization: Bearer {token}\r\nContent-Type: application/octet-stream\r\n"
        f"Content-Length: {declared}\r\n\r\n"
    )
    sock.sendall(head.encode() + first)
    return sock


def slot_taken(box: Any) -> bool:
    return cache.get(SpeedtestSlot(box_id=box.pk).key) is not None


def test_the_upload_streams_through_the_real_server(
    asgi_server: Any, box_factory: Any, agent_token_factory: Any
) -> None:
    box = box_factory()
    token = agent_token_factory(box)

    # an upload of 5 MB (five times the JSON body limit) is counted exactly, and so is a download
    counted, seconds = httpapi.speedtest_upload(asgi_server.url, token, 5_000_000)
    assert counted == 5_000_000 and seconds > 0
    received, _ = httpapi.speedtest(asgi_server.url, token, 3_000_000)
    assert received == 3_000_000

    # a wrong token is refused with the API's error
    with pytest.raises(httpapi.HttpError) as refused:
        httpapi.speedtest_upload(asgi_server.url, "otba_" + "x" * 40, 1000)
    assert refused.value.status == 401

    # while a test's bytes are still arriving, the box's next test is refused with Retry-After
    sock = open_upload(asgi_server.url, token, 1_000_000, bytes(100_000))
    try:
        wait_until(lambda: slot_taken(box), timeout=10, message="the upload did not take the box's slot")
        for test in (httpapi.speedtest, httpapi.speedtest_upload):
            with pytest.raises(httpapi.HttpError) as busy:
                test(asgi_server.url, token, 1000)
            assert busy.value.status == 429 and busy.value.code == "speedtest_busy"
            assert busy.value.retry_after == BUSY_RETRY_AFTER_S
        # and the first test, once complete, is answered with its own count
        sock.sendall(bytes(900_000))
        response = http.client.HTTPResponse(sock)
        response.begin()
        assert response.status == 200
        assert json.loads(response.read())["bytes"] == 1_000_000
    finally:
        sock.close()
    assert not slot_taken(box)

    # a client that goes away mid-upload frees the slot at once (not after the slot's TTL)
    sock = open_upload(asgi_server.url, token, 1_000_000, bytes(50_000))
    wait_until(lambda: slot_taken(box), timeout=10, message="the upload did not take the box's slot")
    sock.close()
    wait_until(lambda: not slot_taken(box), timeout=10, message="the abandoned upload kept the box's slot")
    assert httpapi.speedtest_upload(asgi_server.url, token, 10)[0] == 10


@pytest.mark.skipif(not IS_ROOT, reason="SO_BINDTODEVICE needs root or CAP_NET_RAW")
def test_the_agent_client_can_test_through_one_interface(
    asgi_server: Any, box_factory: Any, agent_token_factory: Any
) -> None:
    token = agent_token_factory(box_factory())
    assert httpapi.speedtest_upload(asgi_server.url, token, 1_500_000, iface="lo")[0] == 1_500_000
    assert httpapi.speedtest(asgi_server.url, token, 1_500_000, iface="lo")[0] == 1_500_000
    with pytest.raises(httpapi.InterfaceError, match="no network interface named 'otbnowan9'"):
        httpapi.speedtest_upload(asgi_server.url, token, 1000, iface="otbnowan9")


class QuietCollector(Collector):
    """A box with no WAN to report: the test is about the command, not the telemetry."""

    name = "quiet"

    def collect(self) -> dict[str, Any]:
        return {
            "ts": time.time(),
            "cpu_pct": 1.0,
            "mem_pct": 1.0,
            "load1": 0.0,
            "uptime_s": 100,
            "tunnel_up": False,
            "conntrack": 0,
            "rx_bps": 0,
            "tx_bps": 0,
            "wans": [],
        }

    def boot_id(self) -> str:
        return "boot-e2e"

    def uptime_s(self) -> int:
        return 100


def test_a_speed_test_command_runs_on_a_real_agent_session(
    asgi_server: Any, people: Any, box_factory: Any, agent_token_factory: Any, tmp_path: Path
) -> None:
    # given a claimed box with a command waiting: both directions (through lo when we may bind)
    box = box_factory(organization=people.org)
    token = agent_token_factory(box)
    params: dict[str, Any] = {"bytes": 2_000_000, "direction": "both"}
    if IS_ROOT:
        params["iface"] = "lo"
    command = command_create(actor=Actor.for_user(people.admin), box=box, kind="speed_test", params=params)

    # when the box's agent connects (its own event loop, in a thread)
    agent = Agent(
        server=asgi_server.url,
        token=token,
        serial=box.serial,
        collector=QuietCollector(),
        store=MemoryStore(),
        system=HostSystem(),
        state_dir=str(tmp_path),
        backoff=Backoff(base=0.1, cap=0.5),
        telemetry_interval=5.0,
        ping_interval=None,
    )
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_until_complete, args=(agent.run(),), daemon=True)
    thread.start()
    try:
        # then the command is delivered, run, and its result stored
        def finished() -> Command | None:
            row = Command.objects.get(pk=command.pk)
            return row if row.state in ("succeeded", "failed", "expired") else None

        done = wait_until(
            finished, timeout=60, message=f"the command did not finish:\n{asgi_server.log_tail()}"
        )
    finally:
        loop.call_soon_threadsafe(agent.stop)
        thread.join(15)
        loop.close()
    assert done.state == "succeeded", (done.error, done.result)
    assert done.result["direction"] == "both"
    assert done.result["bytes"] == 2_000_000 and done.result["mbps"] > 0
    assert done.result["upload"]["bytes"] == 2_000_000 and done.result["upload"]["mbps"] > 0
    assert done.result.get("iface") == params.get("iface")
