"""``otbcompat.http.OtbHttpToolsProtocol`` in a real uvicorn (the production command line): a kept idle
answer goes out from the parser callback, byte for byte what the ASGI fast path sends, and every other
request on the same keep-alive connection (pipelined, HTTP/1.0, a query string, a command due, another
route) is answered as without it."""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest
from django.test import Client

from fleet.commands.choices import CommandKind
from fleet.commands.services import command_create
from fleet.core.audit import Actor
from tests.e2e.browser import LiveServer, asgi_server_start, asgi_server_stop
from tests.otbcompat.test_actions import device_for

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

WAIT = b'{"id": null, "action": "wait", "arguments": {"delay": 10}}'


@pytest.fixture
def server(tmp_path: Any) -> Iterator[LiveServer]:
    live = asgi_server_start(tmp_path / "uvicorn.log")
    yield live
    asgi_server_stop(live)


def request(device: dict[str, Any], *, http: str = "1.1", query: str = "", jwt: str | None = None) -> bytes:
    return (
        f"GET /1.0/devices/{device['device_id']}/actions/todo{query} HTTP/{http}\r\nHost: otb\r\n"
        "User-Agent: curl/8.5.0\r\nAccept: */*\r\nContent-Type: application/json\r\n"
        f"X-Overthebox-Version: 1.1.3\r\nAuthorization: Bearer {jwt or device['jwt']}\r\n\r\n"
    ).encode()


class Connection:
    """One keep-alive client connection that reads whole responses (Content-Length bodies)."""

    def __init__(self, url: str) -> None:
        host, port = url.removeprefix("http://").split(":")
        self.sock = socket.create_connection((host, int(port)), timeout=10)
        self.buffer = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def response(self) -> tuple[int, dict[str, str], bytes]:
        while b"\r\n\r\n" not in self.buffer:
            chunk = self.sock.recv(65536)
            assert chunk, "connection closed before a response"
            self.buffer += chunk
        head, _, rest = self.buffer.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {
            name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines[1:])
        }
        length = int(headers.get("content-length", "0"))
        while len(rest) < length:
            chunk = self.sock.recv(65536)
            assert chunk, "connection closed inside a body"
            rest += chunk
        self.buffer = rest[length:]
        return int(lines[0].split(" ")[1]), headers, rest[:length]

    def closed(self) -> bool:
        return self.sock.recv(1) == b""

    def close(self) -> None:
        self.sock.close()


def early_answers(url: str) -> float:
    """``otb_compat_todo_polls_total{answer="early"}`` of the server (a single process)."""
    import httpx

    text = httpx.get(f"{url}/metrics", timeout=10).text
    match = re.search(r'^otb_compat_todo_polls_total\{answer="early"\} (\S+)$', text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def until_early(connection: Connection, device: dict[str, Any], url: str) -> None:
    """Poll until the server answers from its parser callback (its listener is up, the answer kept)."""
    deadline = time.monotonic() + 10
    while True:
        before = early_answers(url)
        connection.send(request(device))
        status, _headers, body = connection.response()
        assert status == 200 and body == WAIT
        if early_answers(url) > before:
            return
        assert time.monotonic() < deadline, "no poll was answered early"
        time.sleep(0.05)


def test_a_kept_idle_answer_goes_out_from_the_parser_byte_for_byte(
    server: LiveServer, people: Any, claimed_box_factory: Any
) -> None:
    box = claimed_box_factory(people.org)
    device = device_for(Client(), box)
    connection = Connection(server.url)
    try:
        connection.send(request(device))
        status, asgi_headers, body = connection.response()  # the first: the ASGI fast path's query
        assert status == 200 and body == WAIT
        until_early(connection, device, server.url)
        before = early_answers(server.url)
        # pipelined: three polls in one write, answered in order on the same connection
        connection.send(request(device) * 3)
        answers = [connection.response() for _ in range(3)]
        assert [(status, body) for status, _headers, body in answers] == [(200, WAIT)] * 3
        assert early_answers(server.url) >= before + 1
        early_headers = answers[0][1]
        assert {k: v for k, v in early_headers.items() if k != "date"} == {
            k: v for k, v in asgi_headers.items() if k != "date"
        }
        # what it must not answer: a query string and a bad JWT go to uvicorn and Django
        connection.send(request(device, query="?x=1"))
        assert connection.response()[2] == WAIT  # the ASGI fast path: the path without the query
        connection.send(request(device, jwt=device["jwt"][:-3] + "AAA"))
        status, _headers, body = connection.response()
        assert status == 401 and b"Client::Unauthorized" in body
        # another route on the same connection
        connection.send(b"GET /healthz HTTP/1.1\r\nHost: otb\r\n\r\n")
        assert connection.response()[0] == 200
        # a command due: forgotten at once, Django hands it out on the same connection
        command = command_create(actor=Actor.system("test"), box=box, kind=CommandKind.REBOOT)
        deadline = time.monotonic() + 2
        while True:
            connection.send(request(device))
            status, _headers, body = connection.response()
            if body != WAIT:
                break
            assert time.monotonic() < deadline, "the kept idle answer was not forgotten"
        assert status == 200 and str(command.id).encode() in body and b'"reboot"' in body
    finally:
        connection.close()


def test_http_1_0_gets_its_answer_and_the_connection_closed(
    server: LiveServer, people: Any, claimed_box_factory: Any
) -> None:
    device = device_for(Client(), claimed_box_factory(people.org))
    warm = Connection(server.url)
    try:
        until_early(warm, device, server.url)
    finally:
        warm.close()
    before = early_answers(server.url)
    connection = Connection(server.url)
    try:
        connection.send(request(device, http="1.0"))
        status, headers, body = connection.response()
        assert status == 200 and body == WAIT and headers.get("connection") == "close"
        assert connection.closed()
    finally:
        connection.close()
    assert early_answers(server.url) == before + 1
