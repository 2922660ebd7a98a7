"""A minimal HTTP/1.1 keep-alive client for load generation.

The load generator shares the machine's two cores with the server and PostgreSQL; httpx spent about
2 ms of CPU per request, as much as a third of what a claim costs the server. This client writes a
request and reads the answer over one asyncio stream (Content-Length or chunked bodies), nothing
more: about a tenth of that. It is for benchmarks only.
"""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit


class HTTPError(Exception):
    """The connection broke or the answer was not HTTP/1.1."""


class KeepAliveClient:
    """One persistent connection; ``request`` calls must not overlap."""

    def __init__(self, base_url: str, headers: dict[str, str] | None = None, timeout: float = 60) -> None:
        parts = urlsplit(base_url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        self.timeout = timeout
        fixed = {"Host": f"{self.host}:{self.port}", **(headers or {})}
        self._fixed = "".join(f"{name}: {value}\r\n" for name, value in fixed.items())
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def __aenter__(self) -> KeepAliveClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._reader = self._writer = None

    async def request(
        self, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
    ) -> tuple[int, bytes]:
        """(status, body) of one request; reconnects once if the kept-alive connection was closed."""
        for attempt in (0, 1):
            if self._writer is None:
                self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
            try:
                return await asyncio.wait_for(self._exchange(method, path, body, headers), self.timeout)
            except (ConnectionError, asyncio.IncompleteReadError, HTTPError):
                await self.close()
                if attempt:
                    raise
        raise HTTPError("unreachable")

    async def _exchange(
        self, method: str, path: str, body: bytes, headers: dict[str, str] | None
    ) -> tuple[int, bytes]:
        assert self._reader is not None and self._writer is not None
        extra = "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
        head = f"{method} {path} HTTP/1.1\r\n{self._fixed}{extra}Content-Length: {len(body)}\r\n\r\n"
        self._writer.write(head.encode("latin-1") + body)
        reader = self._reader
        status_line = await reader.readline()
        if not status_line.startswith(b"HTTP/1.1 "):
            raise HTTPError(f"bad status line {status_line[:60]!r}")
        status = int(status_line[9:12])
        length = None
        chunked = False
        closing = False
        while True:
            line = await reader.readline()
            if line in (b"\r\n", b""):
                break
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding" and b"chunked" in value.lower():
                chunked = True
            elif name == b"connection" and b"close" in value.lower():
                closing = True
        if chunked:
            parts = []
            while True:
                size = int((await reader.readline()).split(b";")[0], 16)
                data = await reader.readexactly(size + 2)
                if size == 0:
                    break
                parts.append(data[:-2])
            payload = b"".join(parts)
        elif length is not None:
            payload = await reader.readexactly(length) if length else b""
        elif method == "HEAD" or status in (204, 304):
            payload = b""
        else:
            payload = await reader.read()
            closing = True
        if closing:
            await self.close()
        return status, payload
