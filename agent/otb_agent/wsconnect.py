"""Websocket connect across websockets versions (>=13 asyncio API, 12 legacy API)."""

from __future__ import annotations

import os
from typing import Any, Optional

from . import __version__
from .protocol import MAX_FRAME_BYTES


class HandshakeRejected(Exception):
    """The server answered the websocket upgrade with an HTTP error status."""

    def __init__(self, status: int, retry_after: Optional[float] = None) -> None:
        super().__init__(f"websocket handshake rejected with HTTP {status}")
        self.status = status
        self.retry_after = retry_after


def _ssl_for(url: str) -> Any:
    if not url.startswith("wss://"):
        return None
    import ssl

    ca = os.environ.get("OTB_AGENT_CA_FILE")
    return ssl.create_default_context(cafile=ca) if ca else ssl.create_default_context()


def _retry_after(headers: Any) -> Optional[float]:
    try:
        v = headers.get("Retry-After") if headers is not None else None
        return float(v) if v else None
    except (TypeError, ValueError):
        return None


async def connect(
    url: str,
    token: str,
    *,
    ping_interval: Optional[float] = None,
    open_timeout: float = 20.0,
    max_size: int = MAX_FRAME_BYTES,
) -> Any:
    """Open the agent websocket with ``Authorization: Bearer``; no compression (memory)."""
    headers = {"Authorization": f"Bearer {token}"}
    ssl_ctx = _ssl_for(url)
    extra: dict = {}
    if ssl_ctx is not None:
        extra["ssl"] = ssl_ctx
    try:
        from websockets.asyncio.client import connect as new_connect  # websockets >= 13
    except ImportError:  # pragma: no cover - websockets 12
        new_connect = None
    if new_connect is not None and _accepts_proxy(new_connect):
        # websockets >= 15 looks up proxy env vars on every connect (costly with 10k boxes).
        extra["proxy"] = os.environ.get("OTB_AGENT_WS_PROXY") or None
    try:
        if new_connect is not None:
            return await new_connect(
                url,
                additional_headers=headers,
                max_size=max_size,
                compression=None,
                ping_interval=ping_interval,
                ping_timeout=ping_interval,
                open_timeout=open_timeout,
                close_timeout=5,
                max_queue=16,
                user_agent_header=f"otb-agent/{__version__}",
                **extra,
            )
        from websockets.client import connect as legacy_connect  # pragma: no cover

        return await legacy_connect(  # pragma: no cover
            url,
            extra_headers=headers,
            max_size=max_size,
            compression=None,
            ping_interval=ping_interval,
            ping_timeout=ping_interval,
            open_timeout=open_timeout,
            close_timeout=5,
            max_queue=16,
            user_agent_header=f"otb-agent/{__version__}",
            **extra,
        )
    except Exception as e:
        status = _handshake_status(e)
        if status is not None:
            raise HandshakeRejected(status, _retry_after(_handshake_headers(e))) from None
        raise


_PROXY_SUPPORT: dict = {}


def _accepts_proxy(connect_cls: Any) -> bool:
    key = id(connect_cls)
    if key not in _PROXY_SUPPORT:
        import inspect

        try:
            _PROXY_SUPPORT[key] = "proxy" in inspect.signature(connect_cls).parameters
        except (TypeError, ValueError):
            _PROXY_SUPPORT[key] = False
    return _PROXY_SUPPORT[key]


def _handshake_status(e: BaseException) -> Optional[int]:
    resp = getattr(e, "response", None)  # websockets >= 13 InvalidStatus
    if resp is not None and getattr(resp, "status_code", None) is not None:
        return int(resp.status_code)
    code = getattr(e, "status_code", None)  # legacy InvalidStatusCode
    if code is not None:
        return int(code)
    return None


def _handshake_headers(e: BaseException) -> Any:
    resp = getattr(e, "response", None)
    if resp is not None:
        return getattr(resp, "headers", None)
    return getattr(e, "headers", None)


def close_code(e: BaseException) -> Optional[int]:
    """Close code received from the peer for a ConnectionClosed exception (None if none)."""
    rcvd = getattr(e, "rcvd", None)
    if rcvd is not None:
        return int(rcvd.code)
    return None


def connection_closed_types() -> tuple:
    from websockets.exceptions import ConnectionClosed

    return (ConnectionClosed,)


def abort(ws: Any) -> None:
    """Drop the TCP connection without a closing handshake (simulated link loss)."""
    transport = getattr(ws, "transport", None)
    if transport is not None:
        transport.abort()
