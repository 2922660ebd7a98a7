"""The shipped nginx site (deploy/nginx/otb-fleet.conf) run by Debian's nginx: its access log never holds
the token of a stock OverTheBox box's download address (restore archive, sysupgrade image and its
``.sig``), nor a query string, and still names every request."""

from __future__ import annotations

import http.client
import shutil
import ssl
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

from tests.e2e.browser import wait_until
from tests.e2e.test_agent_e2e import free_port
from tests.e2e.test_scaleout import Nginx, make_certificate, render_site

pytestmark = pytest.mark.e2e


def _fetch(url: str, context: ssl.SSLContext | None = None) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5, context=context) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except urllib.error.URLError:  # not listening yet
        return 0


def test_the_access_log_redacts_download_tokens_and_query_strings(tmp_path: Path) -> None:
    assert shutil.which("nginx") or Path("/usr/sbin/nginx").exists(), "Debian's nginx is required"
    # given the shipped site in front of an upstream that is down (nginx answers 502 and logs it)
    cert, key = make_certificate(tmp_path)
    static = tmp_path / "static"
    static.mkdir()
    access_log = tmp_path / "nginx" / "logs" / "site.log"
    http_port, https_port = free_port(), free_port()
    site = render_site(
        web_ports=[free_port()], http_port=http_port, https_port=https_port,
        cert=cert, key=key, static=static, access_log=access_log,
    )  # fmt: skip
    nginx = Nginx(tmp_path / "nginx", site)
    token = f"{uuid.uuid4()}.1700000000.c2lnbmF0dXJlc2lnbmF0dXJl"
    paths = [
        f"/1.0/firmware/{token}/otb-1.1.3.img.gz.sig",
        f"/1.0/firmware/{token}/otb-1.1.3.img.gz",
        f"/1.0/backup_archives/{token}?x=1",
        "/api/v1/boxes/?secret_token=hunter2",
    ]
    context = ssl.create_default_context(cafile=str(cert))
    try:
        nginx.start()
        base = f"https://127.0.0.1:{https_port}"
        wait_until(lambda: _fetch(base + "/healthz", context) == 502, timeout=15)
        # when a box downloads over https, and over plain http (redirected)
        for path in paths:
            assert _fetch(base + path, context) == 502
        plain = http.client.HTTPConnection("127.0.0.1", http_port, timeout=5)
        plain.request("GET", f"/1.0/backup_archives/{token}")
        assert plain.getresponse().status == 301
        plain.close()
        # then every request has its line, with the token and the query string redacted
        wait_until(lambda: access_log.exists() and access_log.read_text().count("\n") >= 5, timeout=10)
    finally:
        nginx.stop()
    text = access_log.read_text()
    assert token not in text and "hunter2" not in text and "x=1" not in text, text
    for line in (
        '"GET /1.0/firmware/[redacted]/otb-1.1.3.img.gz.sig HTTP/1.1" 502',
        '"GET /1.0/firmware/[redacted]/otb-1.1.3.img.gz HTTP/1.1" 502',
        '"GET /1.0/backup_archives/[redacted] HTTP/1.1" 502',
        '"GET /api/v1/boxes/?[redacted] HTTP/1.1" 502',
        '"GET /1.0/backup_archives/[redacted] HTTP/1.1" 301',
    ):
        assert line in text, text
