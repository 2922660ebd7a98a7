"""A stand-in for the backend's two gateway endpoints, for tests that run the real gateway.

``python fakepeers.py --dir D`` serves on 127.0.0.1 (a free port, written to ``D/port``):
GET /api/v1/servers/self/peers answers ``D/peers.json`` (re-read on every request; the ETag is the
sha256 of its bytes, If-None-Match gives 304); POST /api/v1/servers/self/report appends the body
to ``D/reports.jsonl``. Both need ``Authorization: Bearer <D/token>``. Run it where the gateway
runs (inside its network namespace).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PEERS = "/api/v1/servers/self/peers"
REPORT = "/api/v1/servers/self/report"


def make_handler(directory: str) -> type[BaseHTTPRequestHandler]:
    def read(name: str) -> bytes:
        with open(os.path.join(directory, name), "rb") as f:
            return f.read()

    class Handler(BaseHTTPRequestHandler):
        def _authorised(self) -> bool:
            token = read("token").decode().strip()
            if self.headers.get("Authorization") == f"Bearer {token}":
                return True
            self._json(401, {"error": {"code": "not_authenticated", "message": "bad token"}})
            return False

        def _json(self, status: int, body: object, headers: dict[str, str] | None = None) -> None:
            raw = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(raw)

        def do_GET(self) -> None:
            if self.path != PEERS:
                self._json(404, {"error": {"code": "not_found", "message": self.path}})
                return
            if not self._authorised():
                return
            raw = read("peers.json")
            etag = hashlib.sha256(raw).hexdigest()
            with open(os.path.join(directory, "requests.log"), "a") as f:
                f.write(f"GET {self.headers.get('If-None-Match', '')}\n")
            if self.headers.get("If-None-Match", "").strip('"') == etag:
                self.send_response(304)
                self.send_header("ETag", f'"{etag}"')
                self.end_headers()
                return
            peers = json.loads(raw)
            body = {"server": "fake", "etag": etag, "count": len(peers), "peers": peers}
            self._json(200, body, {"ETag": f'"{etag}"'})

        def do_POST(self) -> None:
            if self.path != REPORT:
                self._json(404, {"error": {"code": "not_found", "message": self.path}})
                return
            if not self._authorised():
                return
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            with open(os.path.join(directory, "reports.jsonl"), "ab") as f:
                f.write(body.replace(b"\n", b" ") + b"\n")
            self._json(200, {"accepted": True})

        def log_message(self, format: str, *args: object) -> None:
            pass

    return Handler


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dir", required=True)
    args = parser.parse_args()
    server = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(args.dir))
    with open(os.path.join(args.dir, "port.tmp"), "w") as f:
        f.write(str(server.server_address[1]))
    os.replace(os.path.join(args.dir, "port.tmp"), os.path.join(args.dir, "port"))
    server.serve_forever()


if __name__ == "__main__":
    main()
