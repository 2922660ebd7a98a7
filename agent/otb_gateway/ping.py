"""The ``GET /ping`` responder for stock OverTheBox boxes (standard library only).

A box running the OverTheBox firmware judges its shadowsocks link by fetching
``http://<monitoring_ip>/ping`` through it (``ss-track``): its ``sslocal`` hands the request to the
box's ``ss-server`` on this host, which connects to ``monitoring_ip``. The backend names as
``monitoring_ip`` the server end of the box's tunnel pair, an address of this host (on ``otbgw0``),
so the connection arrives here locally.

One listening socket on all addresses (the tunnel addresses come and go with the peers); a
connection is answered only when it arrived on one of the current tunnel server addresses
(``allow``), so the public address of the server says nothing. Each connection has its own thread
with a read timeout, so a client that stalls holds only itself.
"""

from __future__ import annotations

import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, FrozenSet, Iterable, Optional, Tuple

from otb_agent.util import Logger

PING_PATH = "/ping"
BODY = b"pong\n"
READ_TIMEOUT_S = 5.0


class _Handler(BaseHTTPRequestHandler):
    server_version = "otb-gateway"
    sys_version = ""
    timeout = READ_TIMEOUT_S  # a request line and headers must arrive within this, or the thread ends
    protocol_version = "HTTP/1.1"

    def _answer(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == PING_PATH:
            self._answer(200, BODY)
        else:
            self._answer(404, b"not found\n")

    do_HEAD = do_GET

    def log_message(self, format: str, *args: Any) -> None:
        """No access log: a box asks every few seconds."""


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    allowed: FrozenSet[str] = frozenset()

    def verify_request(self, request: Any, client_address: Any) -> bool:
        """Answer only on the current tunnel server addresses (the socket's own address)."""
        try:
            local = request.getsockname()[0]
        except OSError:
            return False
        return local in self.allowed


class PingResponder:
    """``start()`` binds and serves in a thread; ``allow(addresses)`` replaces the set of local
    addresses it answers on (from the converged peers); ``stop()`` closes it. A failure to bind is
    logged and reported by ``start()`` (False): the gateway goes on without it."""

    def __init__(
        self,
        *,
        # every address on purpose: the tunnel addresses come and go; verify_request filters them
        host: str = "0.0.0.0",  # noqa: S104
        port: int = 80,
        log: Optional[Logger] = None,
    ) -> None:
        self.host = host
        self.port = port
        self.log = log or Logger()
        self._server: Optional[_Server] = None
        self._thread: Optional[threading.Thread] = None
        self._allowed: FrozenSet[str] = frozenset()

    @property
    def address(self) -> Optional[Tuple[str, int]]:
        """(host, port) actually bound (port 0 picks one), or None before ``start``."""
        if self._server is None:
            return None
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    @property
    def allowed(self) -> FrozenSet[str]:
        """The local addresses it answers on."""
        return self._allowed

    def allow(self, addresses: Iterable[str]) -> None:
        allowed = frozenset(addresses)
        self._allowed = allowed
        if self._server is not None:
            self._server.allowed = allowed  # one reference swap: the serving threads read it as a whole

    def start(self) -> bool:
        try:
            server = _Server((self.host, self.port), _Handler)
        except OSError as e:
            self.log.error("ping_bind_failed", host=self.host, port=self.port, error=str(e))
            return False
        server.allowed = self._allowed
        server.socket.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, name="otb-gateway-ping", daemon=True)
        self._thread.start()
        self.log.info("ping_listening", host=self.host, port=self.address[1] if self.address else self.port)
        return True

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = None
        self._thread = None
