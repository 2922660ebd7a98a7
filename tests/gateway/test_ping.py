"""The gateway's ``GET /ping`` responder (otb_gateway.ping): what a stock OverTheBox box's ``ss-track``
fetches on its ``monitoring_ip`` through shadowsocks. Real sockets on loopback."""

from __future__ import annotations

import http.client
import io
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from otb_agent.util import Logger
from otb_gateway.cli import main
from otb_gateway.ping import PingResponder

from tests.gateway.fakehost import FakeHost
from tests.gateway.test_cli import make_gateway
from tests.gateway.test_peers import fake_backend  # noqa: F401  (fixture)


@pytest.fixture
def responder() -> Iterator[PingResponder]:
    ping = PingResponder(host="127.0.0.1", port=0, log=Logger(stream=io.StringIO()))
    ping.allow(["127.0.0.1"])
    assert ping.start()
    yield ping
    ping.stop()


def request(ping: PingResponder, method: str = "GET", path: str = "/ping") -> tuple[int, bytes]:
    address = ping.address
    assert address is not None
    connection = http.client.HTTPConnection(*address, timeout=5)
    try:
        connection.request(method, path)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def test_ping_answers_200_pong_and_nothing_else(responder: PingResponder) -> None:
    assert request(responder) == (200, b"pong\n")
    assert request(responder, path="/ping?x=1")[0] == 200
    assert request(responder, "HEAD") == (200, b"")
    assert request(responder, path="/")[0] == 404
    assert request(responder, path="/admin")[0] == 404
    assert request(responder, "POST")[0] == 501


def test_ping_answers_only_on_the_tunnel_server_addresses(responder: PingResponder) -> None:
    # when 127.0.0.1 is no box's tunnel address any more, a connection to it gets no answer
    responder.allow(["100.64.0.0"])
    with pytest.raises((http.client.RemoteDisconnected, ConnectionError)):
        request(responder)
    responder.allow(["100.64.0.0", "127.0.0.1"])
    assert request(responder) == (200, b"pong\n")


def test_a_stalled_client_does_not_hold_the_others(responder: PingResponder) -> None:
    address = responder.address
    assert address is not None
    stalled = [socket.create_connection(address, timeout=5) for _ in range(5)]
    try:
        stalled[0].sendall(b"GET /pi")  # half a request line, then nothing
        assert request(responder) == (200, b"pong\n")
    finally:
        for connection in stalled:
            connection.close()


def test_a_port_in_use_is_logged_and_the_gateway_goes_on() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        logs = io.StringIO()
        ping = PingResponder(host="127.0.0.1", port=taken.getsockname()[1], log=Logger(stream=logs))
        assert ping.start() is False
        assert "ping_bind_failed" in logs.getvalue()
        ping.stop()  # nothing to stop: harmless


def test_the_gateway_answers_on_its_boxes_tunnel_addresses(fake_backend: tuple[str, Path]) -> None:  # noqa: F811
    # given a gateway whose peers are boxes 0 and 1 (tunnel server addresses 100.64.0.0 and .2)
    url, _ = fake_backend
    gw, _ = make_gateway(FakeHost(), url)
    gw.ping = PingResponder(host="127.0.0.1", port=0, log=Logger(stream=io.StringIO()))
    # when it converges
    assert gw.once() == 0
    # then the responder answers on exactly those addresses
    assert gw.ping.allowed == {"100.64.0.0", "100.64.0.2"}


def test_run_starts_and_stops_the_responder(fake_backend: tuple[str, Path]) -> None:  # noqa: F811
    url, _ = fake_backend
    gw, _ = make_gateway(FakeHost(), url, poll_interval=0.1, report_interval=0.3)
    gw.ping = PingResponder(host="127.0.0.1", port=0, log=Logger(stream=io.StringIO()))
    gw.ping.allow(["127.0.0.1"])
    thread = threading.Thread(target=gw.run)
    thread.start()
    try:
        for _ in range(200):
            if gw.ping.address is not None:
                break
            threading.Event().wait(0.02)
        assert gw.ping.address is not None
    finally:
        gw.stop()
        thread.join(timeout=10)
    assert not thread.is_alive() and gw.ping.address is None


def test_main_refuses_a_bad_ping_port(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    token = tmp_path / "token"
    token.write_text("otbs_x\n")
    code = main(["--server", "http://127.0.0.1:9", "--token-file", str(token), "--ping-port", "70000"])
    assert code == 2 and "--ping-port" in capsys.readouterr().err
