"""Blocking HTTP client for the agent endpoints (stdlib urllib; call from a thread)."""

from __future__ import annotations

import json
import os
import time
from typing import Any, Dict, Optional, Tuple

DEFAULT_TIMEOUT = 30.0


class HttpError(Exception):
    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        fields: Optional[Dict[str, Any]] = None,
        retry_after: Optional[float] = None,
    ) -> None:
        super().__init__(f"HTTP {status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.fields = fields or {}
        self.retry_after = retry_after


def _ssl_context() -> Any:
    ca = os.environ.get("OTB_AGENT_CA_FILE")
    if not ca:
        return None
    import ssl

    return ssl.create_default_context(cafile=ca)


def api_url(server: str, path: str) -> str:
    return server.rstrip("/") + path


def ws_url(server: str) -> str:
    s = server.rstrip("/")
    if s.startswith("https://"):
        s = "wss://" + s[len("https://") :]
    elif s.startswith("http://"):
        s = "ws://" + s[len("http://") :]
    return s + "/ws/agent/"


def _parse_retry_after(value: Optional[str]) -> Optional[float]:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        from email.utils import parsedate_to_datetime

        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def request(
    method: str,
    url: str,
    *,
    body: Optional[Dict[str, Any]] = None,
    token: Optional[str] = None,
    headers: Optional[Dict[str, str]] = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> Tuple[int, Dict[str, str], bytes]:
    """Perform a request; return (status, headers, body) for 2xx/304, raise HttpError otherwise."""
    import urllib.error
    import urllib.request

    from . import __version__

    hdrs = {"Accept": "application/json", "User-Agent": f"otb-agent/{__version__}"}
    if headers:
        hdrs.update(headers)
    data = None
    if body is not None:
        data = json.dumps(body).encode("utf-8")
        hdrs["Content-Type"] = "application/json"
    if token:
        hdrs["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url, data=data, headers=hdrs, method=method)  # noqa: S310
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=_ssl_context()) as resp:  # noqa: S310
            return resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read()
    except urllib.error.HTTPError as e:
        if e.code == 304:
            return 304, {k.lower(): v for k, v in e.headers.items()}, b""
        raw = e.read() or b""
        code, message, fields = f"http_{e.code}", (e.reason or "") if isinstance(e.reason, str) else "", {}
        try:
            err = json.loads(raw.decode("utf-8")).get("error") or {}
            code = str(err.get("code") or code)
            message = str(err.get("message") or message)
            fields = err.get("fields") or {}
        except (ValueError, AttributeError, UnicodeDecodeError):
            if raw:
                message = raw[:200].decode("utf-8", "replace")
        raise HttpError(
            e.code, code, message, fields, _parse_retry_after(e.headers.get("Retry-After"))
        ) from None
    except urllib.error.URLError as e:
        raise ConnectionError(f"{url}: {e.reason}") from None


def enroll(server: str, body: Dict[str, Any], timeout: float = DEFAULT_TIMEOUT) -> Dict[str, Any]:
    _, _, raw = request("POST", api_url(server, "/api/v1/agent/enroll"), body=body, timeout=timeout)
    return json.loads(raw.decode("utf-8"))


def fetch_config(
    server: str, token: str, etag_hash: Optional[str], timeout: float = DEFAULT_TIMEOUT
) -> Tuple[int, Optional[Dict[str, Any]], Optional[str]]:
    """GET the config. Returns (200, body, hash) or (304, None, hash-we-sent)."""
    headers = {}
    if etag_hash:
        headers["If-None-Match"] = f'"{etag_hash}"'
    status, hdrs, raw = request(
        "GET", api_url(server, "/api/v1/agent/config"), token=token, headers=headers, timeout=timeout
    )
    if status == 304:
        return 304, None, etag_hash
    body = json.loads(raw.decode("utf-8"))
    h = body.get("config_hash") if isinstance(body, dict) else None
    if not h:
        etag = hdrs.get("etag", "")
        h = etag.strip().removeprefix("W/").strip('"') or None
    return status, body, h


def post_applied(
    server: str, token: str, config_hash: str, error: Optional[str], timeout: float = DEFAULT_TIMEOUT
) -> None:
    request(
        "POST",
        api_url(server, "/api/v1/agent/config/applied"),
        body={"config_hash": config_hash, "error": error},
        token=token,
        timeout=timeout,
    )


def speedtest(server: str, token: str, nbytes: int, timeout: float = 120.0) -> Tuple[int, float]:
    """Download nbytes from the speedtest endpoint; return (bytes received, seconds)."""
    import urllib.request

    from . import __version__

    url = api_url(server, f"/api/v1/agent/speedtest?bytes={int(nbytes)}")
    req = urllib.request.Request(  # noqa: S310
        url, headers={"Authorization": f"Bearer {token}", "User-Agent": f"otb-agent/{__version__}"}
    )
    t0 = time.monotonic()
    total = 0
    with urllib.request.urlopen(req, timeout=timeout, context=_ssl_context()) as resp:  # noqa: S310
        while True:
            chunk = resp.read(65536)
            if not chunk:
                break
            total += len(chunk)
    return total, time.monotonic() - t0
