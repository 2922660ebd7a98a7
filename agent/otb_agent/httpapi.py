"""Blocking HTTP client for the agent endpoints (stdlib urllib and http.client; call from a thread)."""

from __future__ import annotations

import contextlib
import errno
import http.client
import json
import os
import socket
import ssl
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from email.utils import parsedate_to_datetime
from typing import Any, Callable, Dict, Iterator, Optional, Tuple
from urllib.parse import urlsplit

from . import __version__

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


def _ssl_context() -> Optional[ssl.SSLContext]:
    ca = os.environ.get("OTB_AGENT_CA_FILE")
    if not ca:
        return None
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
        reason = e.reason if isinstance(e.reason, str) else ""
        raise _http_error(e.code, reason, e.read() or b"", e.headers.get("Retry-After")) from None
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


def backup_upload(
    server: str, token: str, command_id: str, files: Any, timeout: float = DEFAULT_TIMEOUT
) -> Dict[str, Any]:
    """Upload a whole backup for the ``backup`` command ``command_id``; the server's backup object."""
    _, _, raw = request(
        "POST",
        api_url(server, "/api/v1/agent/backups"),
        body={"command_id": command_id, "files": files},
        token=token,
        timeout=timeout,
    )
    return json.loads(raw.decode("utf-8"))


def backup_fetch(server: str, token: str, backup_id: str, timeout: float = DEFAULT_TIMEOUT) -> Dict[str, Any]:
    """One backup of this box with its files' text (for the ``restore`` command)."""
    path = "/api/v1/agent/backups/" + urllib.parse.quote(backup_id, safe="")
    _, _, raw = request("GET", api_url(server, path), token=token, timeout=timeout)
    return json.loads(raw.decode("utf-8"))


# --------------------------------------------------------------------------- speed test
#
# http.client rather than urllib: the socket can then be bound to one network interface (one WAN),
# and the upload is written in chunks. Speed tests never go through an HTTP proxy (that would
# measure the proxy, not the WAN).

SPEEDTEST_TIMEOUT = 120.0
_CHUNK = 65536
_ZEROS = bytes(_CHUNK)
# Linux's SO_BINDTODEVICE; the socket module only names it from Python 3.10 (the agent runs on 3.9).
SO_BINDTODEVICE = getattr(socket, "SO_BINDTODEVICE", 25)


class InterfaceError(Exception):
    """The test's socket could not be bound to the asked network interface."""


def bind_to_interface(sock: socket.socket, iface: str) -> None:
    """Bind ``sock`` to the network interface ``iface`` (Linux SO_BINDTODEVICE): its traffic then
    leaves through that interface only. Raises InterfaceError with a readable reason."""
    if not sys.platform.startswith("linux"):
        raise InterfaceError("binding to a network interface needs Linux (SO_BINDTODEVICE)")
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_BINDTODEVICE, iface.encode("utf-8"))
    except OSError as e:
        if e.errno == errno.ENODEV:
            raise InterfaceError(f"no network interface named {iface!r}") from None
        if e.errno in (errno.EPERM, errno.EACCES):
            raise InterfaceError(f"not permitted to bind to {iface!r} (needs root or CAP_NET_RAW)") from None
        raise InterfaceError(f"cannot bind to {iface!r}: {e.strerror or e}") from None


def _bound_create_connection(iface: str) -> Callable[..., socket.socket]:
    """A replacement for socket.create_connection that binds each socket to ``iface`` first."""

    def create_connection(
        address: Tuple[str, int], timeout: Any = None, source_address: Any = None
    ) -> socket.socket:
        host, port = address
        last: Optional[OSError] = None
        for family, kind, proto, _, sockaddr in socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM):
            sock = socket.socket(family, kind, proto)
            try:
                bind_to_interface(sock, iface)
                if isinstance(timeout, (int, float)):
                    sock.settimeout(timeout)
                if source_address:
                    sock.bind(source_address)
                sock.connect(sockaddr)
                return sock
            except InterfaceError:
                sock.close()
                raise
            except OSError as e:
                sock.close()
                last = e
        raise last or OSError(f"no address found for {host}")

    return create_connection


def _speedtest_connection(server: str, timeout: float, iface: Optional[str]) -> Tuple[Any, str]:
    """An unconnected HTTP(S) connection to the server (bound to ``iface`` if given) and the path
    prefix of the server URL."""
    u = urlsplit(server)
    if u.scheme not in ("http", "https") or not u.hostname:
        raise ValueError(f"not an http(s) server URL: {server!r}")
    conn: Any
    if u.scheme == "https":
        conn = http.client.HTTPSConnection(u.hostname, u.port, timeout=timeout, context=_ssl_context())
    else:
        conn = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)
    if iface:
        # http.client opens its socket through this attribute (CPython 3.4 to 3.13 at least).
        conn._create_connection = _bound_create_connection(iface)
    return conn, u.path.rstrip("/")


SPEEDTEST_PATH = "/api/v1/agent/speedtest"


@contextlib.contextmanager
def _open_speedtest_connection(
    server: str, timeout: float, iface: Optional[str]
) -> Iterator[Tuple[Any, str]]:
    """A connection to the server (bound to ``iface`` if given), connected before the clock starts,
    and the speedtest endpoint's path on it; closed afterwards. Network errors become ConnectionError
    naming the URL (InterfaceError is raised as is)."""
    conn, prefix = _speedtest_connection(server, timeout, iface)
    try:
        try:
            conn.connect()
        except InterfaceError:
            raise
        except OSError as e:
            raise ConnectionError(f"{api_url(server, SPEEDTEST_PATH)}: {e}") from None
        yield conn, prefix + SPEEDTEST_PATH
    finally:
        conn.close()


def _error_from(resp: Any, raw: bytes) -> HttpError:
    """The HttpError for a non-2xx ``http.client`` answer."""
    return _http_error(resp.status, resp.reason or "", raw, resp.getheader("Retry-After"))


def _http_error(status: int, reason: str, raw: bytes, retry_after: Optional[str]) -> HttpError:
    """The HttpError for a non-2xx answer, from the API's JSON error shape when it has one."""
    code, message = f"http_{status}", reason
    fields: Dict[str, Any] = {}
    try:
        err = json.loads(raw.decode("utf-8")).get("error") or {}
        code = str(err.get("code") or code)
        message = str(err.get("message") or message)
        fields = err.get("fields") or {}
    except (ValueError, AttributeError, UnicodeDecodeError):
        if raw:
            message = raw[:200].decode("utf-8", "replace")
    return HttpError(status, code, message, fields, _parse_retry_after(retry_after))


def _speedtest_headers(token: str) -> Dict[str, str]:
    return {
        "Authorization": f"Bearer {token}",
        "User-Agent": f"otb-agent/{__version__}",
        "Accept": "application/json, application/octet-stream",
    }


def speedtest(
    server: str, token: str, nbytes: int, timeout: float = SPEEDTEST_TIMEOUT, iface: Optional[str] = None
) -> Tuple[int, float]:
    """Download nbytes from the speedtest endpoint (through ``iface`` if given); return (bytes
    received, seconds from the request to the last byte, the connection set up beforehand)."""
    url = api_url(server, SPEEDTEST_PATH)
    with _open_speedtest_connection(server, timeout, iface) as (conn, path):
        t0 = time.monotonic()
        total = 0
        try:
            conn.request("GET", f"{path}?bytes={int(nbytes)}", headers=_speedtest_headers(token))
            resp = conn.getresponse()
            if resp.status != 200:
                raise _error_from(resp, resp.read(65536))
            while True:
                chunk = resp.read(_CHUNK)
                if not chunk:
                    break
                total += len(chunk)
        except (OSError, http.client.HTTPException) as e:
            raise ConnectionError(f"{url}: {e}") from None
        return total, time.monotonic() - t0


def speedtest_upload(
    server: str, token: str, nbytes: int, timeout: float = SPEEDTEST_TIMEOUT, iface: Optional[str] = None
) -> Tuple[int, float]:
    """Upload nbytes zero bytes to the speedtest endpoint (through ``iface`` if given), written in
    64 KiB chunks after a Content-Length; return (bytes the server says it received, seconds from
    the request to the server's answer, the connection set up beforehand)."""
    url = api_url(server, SPEEDTEST_PATH)
    view = memoryview(_ZEROS)
    with _open_speedtest_connection(server, timeout, iface) as (conn, path):
        t0 = time.monotonic()
        try:
            conn.putrequest("POST", path, skip_accept_encoding=True)
            for name, value in _speedtest_headers(token).items():
                conn.putheader(name, value)
            conn.putheader("Content-Type", "application/octet-stream")
            conn.putheader("Content-Length", str(int(nbytes)))
            conn.endheaders()
            remaining = nbytes
            send_error: Optional[OSError] = None
            try:
                while remaining > 0:
                    n = min(remaining, _CHUNK)
                    conn.send(view[:n])
                    remaining -= n
            except OSError as e:
                # The server may refuse early (401, 413, 429) and stop reading: its answer tells
                # why, if it can still be read.
                send_error = e
            try:
                resp = conn.getresponse()
                raw = resp.read(65536)
            except (OSError, http.client.HTTPException):
                if send_error is None:
                    raise
                raise send_error from None
        except (OSError, http.client.HTTPException) as e:
            raise ConnectionError(f"{url}: {e}") from None
        duration = time.monotonic() - t0
        if resp.status != 200:
            raise _error_from(resp, raw)
        if send_error is not None:
            sent = nbytes - remaining
            raise ConnectionError(f"{url}: sending failed after {sent} of {nbytes} bytes: {send_error}")
        try:
            counted = json.loads(raw.decode("utf-8"))["bytes"]
        except (ValueError, KeyError, TypeError, UnicodeDecodeError):
            raise HttpError(resp.status, "bad_answer", f"unexpected answer: {raw[:200]!r}") from None
        if type(counted) is not int:
            raise HttpError(resp.status, "bad_answer", f"unexpected byte count: {counted!r}")
        return counted, duration
