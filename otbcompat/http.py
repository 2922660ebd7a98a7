"""uvicorn's httptools HTTP protocol, answering a stock box's idle poll before any ASGI task exists.

``uvicorn --http otbcompat.http:OtbHttpToolsProtocol`` (the systemd unit, ``make run`` and the
benchmarks use it). When a ``GET /1.0/devices/{id}/actions/todo`` with no body arrives on a connection
with nothing in flight, and the todo fast path (otbcompat/fastpath.py) holds this device's idle answer
for this very JWT (``OtbTodoFastPath.idle_known``: same checks, same presence note, same counter), the
whole response (status line, uvicorn's ``date``/``server`` headers, the fast path's headers and body)
goes out in one write from the parser callback. Everything else, and any request this cannot be sure
of (pipelined, with a body, an upgrade, a query string, escapes), goes through uvicorn unchanged, where
the ASGI fast path and Django answer it as without this class.

What it saves per idle poll: the ASGI task, the request/response cycle object, the middleware layers
and one of the two writes (uvicorn writes the head and the body separately). Measured in
``bench/otb_poll.py`` (docs/otb-protocol.md). It relies on uvicorn's ``HttpToolsProtocol`` internals
(``on_headers_complete``/``on_message_complete``, ``cycle``, ``pipeline``, ``on_response_complete``):
uvicorn is pinned, and tests/otbcompat/test_http_protocol.py runs it in a real uvicorn.
"""

from __future__ import annotations

import re
import sys
import time
from typing import Any

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

TODO_URL = re.compile(rb"^/1\.0/devices/([0-9a-f-]{36})/actions/todo$")
# the ASGI fast path's headers, in its order (the answers are byte for byte the same)
CONTENT_TYPE = b"content-type: application/json\r\n"
NOSNIFF = b"x-content-type-options: nosniff\r\n"
BODY_HEADERS = (b"content-length", b"transfer-encoding")


class OtbHttpToolsProtocol(HttpToolsProtocol):
    _otb_answer: bytes | None = None

    def _otb_idle_answer(self) -> bytes | None:
        # uvicorn imports this class before the application (and Django): the fast path is looked up
        # once the application has created it
        module: Any = sys.modules.get("otbcompat.fastpath")
        active = None if module is None else module.ACTIVE
        if active is None or self.pipeline or (self.cycle is not None and not self.cycle.response_complete):
            return None
        parser = self.parser
        if parser.get_method() != b"GET" or parser.should_upgrade():
            return None
        match = TODO_URL.match(self.url)
        if match is None:
            return None
        if any(name in BODY_HEADERS and value != b"0" for name, value in self.headers):
            return None
        token, version = module.poll_credentials(self.headers)
        if not token or not active.idle_known(
            match.group(1).decode("ascii"), token, version, time.time(), counter=module.ANSWERED_EARLY
        ):
            return None
        body = active.wait_body
        keep_alive = parser.get_http_version() == "1.1" and parser.should_keep_alive()
        content = [STATUS_LINE[200]]
        for name, value in self.server_state.default_headers:
            content.extend([name, b": ", value, b"\r\n"])
        content.extend([CONTENT_TYPE, b"content-length: %d\r\n" % len(body), NOSNIFF])
        if not keep_alive:
            content.append(b"connection: close\r\n")
        content.extend([b"\r\n", body])
        self._otb_keep_alive = keep_alive
        return b"".join(content)

    def on_headers_complete(self) -> None:
        answer = self._otb_idle_answer()
        if answer is None:
            super().on_headers_complete()
            return
        self._otb_answer = answer
        self.scope["method"] = "GET"

    def on_body(self, body: bytes) -> None:
        if self._otb_answer is None:
            super().on_body(body)

    def on_message_complete(self) -> None:
        answer = self._otb_answer
        if answer is None:
            super().on_message_complete()
            return
        self._otb_answer = None
        self.transport.write(answer)
        if self.access_log:
            self._otb_access_log()
        if not self._otb_keep_alive:
            self.transport.close()
            return
        self.on_response_complete()

    def _otb_access_log(self) -> None:
        client = self.client
        address = "%s:%d" % client if client else ""  # noqa: UP031 (uvicorn's own format)
        self.access_logger.info(
            '%s - "%s %s HTTP/%s" %d', address, "GET", self.url.decode("ascii"), "1.1", 200
        )

    def connection_lost(self, exc: Any) -> None:
        self._otb_answer = None
        super().connection_lost(exc)
