"""Websocket connect across websockets versions (>=13 asyncio API, 12 legacy API)."""

from __future__ import annotations

import importlib
import inspect
import os
import ssl
from typing import Any, Callable, Dict, Optional, Tuple

from otb_protocol import MAX_FRAME_BYTES
from websockets.exceptions import ConnectionClosed

from . import __version__

__all__ = ["ConnectionClosed", "HandshakeRejected", "abort", "close_code", "connect"]


def _load_client() -> Tuple[Callable[..., Any], str]:
    """websockets' client ``connect`` and the name of its extra-headers argument."""
    try:
        module = importlib.import_module("websockets.asyncio.client")  # websockets >= 13
        return module.connect, "additional_headers"
    except ImportError:  # pragma: no cover - websockets 12: the legacy client
        module = importlib.import_module("websockets.client")
        return module.connect, "extra_headers"


_CONNECT, _HEADERS_ARGUMENT = _load_client()


def _accepts_proxy(connect: Callable[..., Any]) -> bool:
    try:
        return "proxy" in inspect.signature(connect).parameters
    except (TypeError, ValueError):
        return False


# websockets >= 15 looks up proxy env vars on every connect (costly with 10k boxes): say which to use.
_ACCEPTS_PROXY = _accepts_proxy(_CONNECT)


class HandshakeRejected(Exception):
    """The server answered the websocket upgrade with an HTTP error status."""

    def __init__(self, status: int, retry_after: Optional[float] = None) -> None:
        super().__init__(f"websocket handshake rejected with HTTP {status}")
        self.status = status
        self.retry_after = retry_after


def _ssl_for(url: str) -> Optional[ssl.SSLContext]:
    if not url.startswith("wss://"):
        return None
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
    options: Dict[str, Any] = {
        _HEADERS_ARGUMENT: {"Authorization": f"Bearer {token}"},
        "max_size": max_size,
        "compression": None,
        "ping_interval": ping_interval,
        "ping_timeout": ping_interval,
        "open_timeout": open_timeout,
        "close_timeout": 5,
        "max_queue": 16,
        "user_agent_header": f"otb-agent/{__version__}",
    }
    ssl_ctx = _ssl_for(url)
    if ssl_ctx is not None:
        options["ssl"] = ssl_ctx
    if _ACCEPTS_PROXY:
        options["proxy"] = os.environ.get("OTB_AGENT_WS_PROXY") or None
    try:
        return await _CONNECT(url, **options)
    except Exception as e:
        status = _handshake_status(e)
        if status is not None:
            raise HandshakeRejected(status, _retry_after(_handshake_headers(e))) from None
        raise


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


def abort(ws: Any) -> None:
    """Drop the TCP connection without a closing handshake (simulated link loss)."""
    transport = getattr(ws, "transport", None)
    if transport is not None:
        transport.abort()
