"""A tiny fake fleet server for agent tests: stdlib HTTP + a websockets server.

Implements the server side of docs/agent-otb_protocol.md closely enough to drive the agent:
enroll, config (ETag / If-None-Match), config/applied, speedtest (download and upload), and the
websocket session (hello/welcome, telemetry acks with seq dedupe, commands, close codes). No database.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import otb_protocol


class FakeHTTP:
    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.tokens: dict[str, str] = {}  # agent_token -> serial
        self.secrets: dict[str, str] = {"BOX1": "s3cret"}
        self.enrollment_tokens = {"enroll-token"}
        self.rate_limit_next = 0  # answer 429 to this many enroll requests first
        self.config: dict[str, Any] = {}
        self.set_config({"wan_policy": {"mode": "aggregate", "interfaces": []}, "telemetry_interval_s": 10})
        self.applied: list[dict[str, Any]] = []
        self.uploads: list[int] = []  # bytes received by each speed-test upload
        self.speedtest_busy = False  # answer speed tests 429 (another test of the box runs)
        self.drop_next: dict[str, int] = {}  # path -> close this many requests without answering
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _json(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
                raw = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(raw)

            def _err(self, status: int, code: str, msg: str, headers: dict[str, str] | None = None) -> None:
                self._json(status, {"error": {"code": code, "message": msg, "fields": {}}}, headers)

            def _auth(self) -> str | None:
                h = self.headers.get("Authorization", "")
                tok = h[7:] if h.startswith("Bearer ") else None
                return tok if tok in fake.tokens else None

            def _speedtest_upload(self) -> None:
                """Like the real endpoint: read the body in chunks, count it, keep nothing."""
                declared = self.headers.get("Content-Length")
                fake.requests.append(
                    {"method": "POST", "path": self.path, "body": None, "headers": dict(self.headers)}
                )
                if not self._auth():
                    return self._err(401, "unauthorized", "bad token")
                if declared is None or not declared.isdigit():
                    return self._err(411, "length_required", "Content-Length required")
                if fake.speedtest_busy:
                    return self._err(429, "speedtest_busy", "another speed test", {"Retry-After": "15"})
                size, received, first, last = int(declared), 0, 0.0, 0.0
                while received < size:
                    chunk = self.rfile.read(min(65536, size - received))
                    if not chunk:
                        break
                    last = time.monotonic()
                    first = first or last
                    received += len(chunk)
                fake.uploads.append(received)
                return self._json(200, {"bytes": received, "duration_s": round(last - first, 6)})

            def _dropped(self) -> bool:
                """A network-level failure: the connection closes without an answer."""
                if fake.drop_next.get(self.path, 0) > 0:
                    fake.drop_next[self.path] -= 1
                    fake.requests.append({"method": self.command, "path": self.path, "dropped": True})
                    self.close_connection = True
                    return True
                return False

            def do_POST(self) -> None:
                if self._dropped():
                    return None
                if self.path == "/api/v1/agent/speedtest":
                    return self._speedtest_upload()
                n = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(n) or b"{}")
                fake.requests.append(
                    {"method": "POST", "path": self.path, "body": body, "headers": dict(self.headers)}
                )
                if self.path == "/api/v1/agent/enroll":
                    if fake.rate_limit_next > 0:
                        fake.rate_limit_next -= 1
                        return self._err(429, "rate_limited", "slow down", {"Retry-After": "0"})
                    serial = body.get("serial")
                    ok = (
                        body.get("factory_secret") is not None
                        and fake.secrets.get(serial) == body["factory_secret"]
                    ) or body.get("enrollment_token") in fake.enrollment_tokens
                    if not ok:
                        return self._err(401, "invalid_credentials", "wrong secret")
                    token = "otba_" + uuid.uuid4().hex
                    fake.tokens[token] = serial
                    return self._json(
                        201, {"box_id": str(uuid.uuid4()), "agent_token": token, "serial": serial}
                    )
                if self.path == "/api/v1/agent/config/applied":
                    if not self._auth():
                        return self._err(401, "unauthorized", "bad token")
                    fake.applied.append(body)
                    return self._json(200, {"ok": True})
                return self._err(404, "not_found", self.path)

            def do_GET(self) -> None:
                if self._dropped():
                    return None
                fake.requests.append({"method": "GET", "path": self.path, "headers": dict(self.headers)})
                if not self._auth():
                    return self._err(401, "unauthorized", "bad token")
                if self.path == "/api/v1/agent/config":
                    h = fake.config["config_hash"]
                    if self.headers.get("If-None-Match") == f'"{h}"':
                        self.send_response(304)
                        self.send_header("ETag", f'"{h}"')
                        self.end_headers()
                        return None
                    return self._json(200, fake.config, {"ETag": f'"{h}"'})
                if self.path.startswith("/api/v1/agent/speedtest"):
                    if fake.speedtest_busy:
                        return self._err(429, "speedtest_busy", "another speed test", {"Retry-After": "15"})
                    n = int(self.path.split("bytes=")[1])
                    self.send_response(200)
                    self.send_header("Content-Length", str(n))
                    self.end_headers()
                    self.wfile.write(b"\0" * n)
                    return None
                return self._err(404, "not_found", self.path)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def set_config(self, body: dict[str, Any]) -> str:
        body = {k: v for k, v in body.items() if k != "config_hash"}
        h = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:32]
        self.config = {**body, "config_hash": h}
        return h

    def config_requests(self) -> list[dict[str, Any]]:
        return [r for r in self.requests if r["path"] == "/api/v1/agent/config"]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class FakeWS:
    """Websocket side. One box per token; a new session for the same token replaces the old (4002)."""

    def __init__(self, http: FakeHTTP) -> None:
        self.http = http
        self.stored: dict[str, list[int]] = {}  # serial -> stored seqs (in order)
        self.last_seq: dict[str, int] = {}
        self.hellos: list[dict[str, Any]] = []
        self.frames: list[dict[str, Any]] = []
        self.results: list[dict[str, Any]] = []
        self.progress: list[dict[str, Any]] = []
        self.pending_commands: list[dict[str, Any]] = []
        self.revoked: set[str] = set()
        self.drop_acks = False
        self.telemetry_interval = 10.0
        self.heartbeat_interval = 30.0
        self.conns: dict[str, Any] = {}
        self.invalid: list[str] = []
        self.sessions = 0
        self.server: Any = None
        self.url = ""
        self.hello_event = asyncio.Event()

    async def start(self) -> None:
        from websockets.asyncio.server import serve

        self.server = await serve(
            self.handler, "127.0.0.1", 0, max_size=otb_protocol.MAX_FRAME_BYTES, compression=None
        )
        port = self.server.sockets[0].getsockname()[1]
        self.url = f"ws://127.0.0.1:{port}/ws/agent/"

    async def stop(self) -> None:
        self.server.close()
        await self.server.wait_closed()

    async def send(self, serial: str, msg: dict[str, Any]) -> None:
        await self.conns[serial].send(otb_protocol.encode(msg))

    async def close(self, serial: str, code: int, reason: str = "") -> None:
        await self.conns[serial].close(code, reason)

    async def handler(self, ws: Any) -> None:
        auth = ws.request.headers.get("Authorization", "")
        token = auth[7:] if auth.startswith("Bearer ") else ""
        serial = self.http.tokens.get(token)
        if serial is None or token in self.revoked:
            await ws.close(otb_protocol.CLOSE_UNAUTHORIZED, "unauthorized")
            return
        old = self.conns.get(serial)
        if old is not None:
            await old.close(otb_protocol.CLOSE_REPLACED, "replaced")
        self.conns[serial] = ws
        self.sessions += 1
        try:
            hello = otb_protocol.decode(await ws.recv())
            assert hello["type"] == "hello"
            self.hellos.append(hello)
            self.hello_event.set()
            await ws.send(
                otb_protocol.encode(
                    {
                        "type": "welcome",
                        "session_id": str(uuid.uuid4()),
                        "telemetry_interval_s": self.telemetry_interval,
                        "heartbeat_interval_s": self.heartbeat_interval,
                        "desired_config_hash": self.http.config["config_hash"],
                        "last_acked_seq": self.last_seq.get(serial, 0),
                        "pending_commands": list(self.pending_commands),
                    }
                )
            )
            async for raw in ws:
                try:
                    msg = otb_protocol.decode(raw)
                except otb_protocol.ProtocolError as e:
                    self.invalid.append(str(e))
                    continue
                self.frames.append(msg)
                t = msg["type"]
                if t == "telemetry":
                    seq = msg["seq"]
                    if seq > self.last_seq.get(serial, 0):
                        self.stored.setdefault(serial, []).append(seq)
                        self.last_seq[serial] = seq
                    if not self.drop_acks:
                        await ws.send(otb_protocol.encode({"type": "ack", "seq": seq}))
                elif t == "command_result":
                    self.results.append(msg)
                elif t == "command_progress":
                    self.progress.append(msg)
        except Exception:
            pass
        finally:
            if self.conns.get(serial) is ws:
                del self.conns[serial]
