"""The download addresses of stock OverTheBox boxes carry their credential in the path (the box fetches
with plain curl): no log line holds it, neither the request log (``otb.http``), nor a JSON line of any
logger, nor uvicorn's access log."""

from __future__ import annotations

import json
import logging
import uuid
from typing import Any

import pytest
from django.test import Client

from fleet.core.logging import REDACTED, AccessLogRedactFilter, JsonFormatter, RequestIdFilter
from otbcompat.downloads import firmware_path
from tests.otbcompat.test_backups import LinkedBox, box_file, otb_call

pytestmark = pytest.mark.django_db


def _lines(caplog: Any) -> list[str]:
    """Every record the request wrote, as our JSON handler writes it, plus its raw attributes."""
    lines = []
    for record in caplog.records:
        RequestIdFilter().filter(record)
        lines.append(JsonFormatter().format(record))
        lines.append(repr({key: str(value) for key, value in vars(record).items()}))
    return lines


@pytest.fixture
def ours(box_factory: Any, people: Any) -> LinkedBox:
    return LinkedBox(box_factory(organization=people.org), "00:0d:b9:4a:11:31")


def test_a_backup_download_is_logged_without_its_token(ours: LinkedBox, caplog: Any) -> None:
    # given a backup and the restore link the box was given
    client = Client()
    backup_id = ours.start(client)
    stored = otb_call(
        client, "PUT", ours.path(f"backups/{backup_id}"), box_file("/etc/config/network"), ours.jwt
    )
    assert stored.status_code == 200
    url = otb_call(client, "GET", ours.path(f"backups/{backup_id}"), jwt=ours.jwt).json()["backup_url"]
    path = url.removeprefix("http://testserver")
    token = path.rsplit("/", 1)[1]
    # when the box downloads it (plain curl: no header), with a query string as curl may add
    caplog.clear()
    with caplog.at_level(logging.DEBUG):
        archive = Client().get(f"{path}?sig=also-secret")
    assert archive.status_code == 200
    # then the request log names the route and a redacted path, and no record holds the token
    [record] = [record for record in caplog.records if record.name == "otb.http"]
    line = json.loads(JsonFormatter().format(record))
    assert line["route"] == "/1.0/backup_archives/<str:token>"
    assert line["path"] == f"/1.0/backup_archives/{REDACTED}"
    assert line["status"] == 200
    for text in _lines(caplog):
        assert token not in text and "also-secret" not in text


def test_a_refused_download_is_logged_without_its_token(caplog: Any) -> None:
    # given a firmware address as the sysupgrade action hands it out (its release is gone) and a
    # forged backup link
    firmware = firmware_path(release_id=str(uuid.uuid4()), version="1.1.3", ttl_s=600)
    firmware_token = firmware.split("/")[3]
    forged_token = f"{uuid.uuid4().hex}.1700000000.forgedsignaturevalue"
    # when the box fetches them (the .sig first), Django's request errors logged too
    with caplog.at_level(logging.DEBUG):
        for path in (f"{firmware}.sig", firmware, f"/1.0/backup_archives/{forged_token}"):
            assert Client().get(path).status_code == 404
    # then the three request lines keep the file name but not the tokens
    paths = [record.path for record in caplog.records if record.name == "otb.http"]
    assert paths == [
        f"/1.0/firmware/{REDACTED}/otb-1.1.3.img.gz.sig",
        f"/1.0/firmware/{REDACTED}/otb-1.1.3.img.gz",
        f"/1.0/backup_archives/{REDACTED}",
    ]
    for text in _lines(caplog):
        assert firmware_token not in text and forged_token not in text


def test_uvicorns_access_log_is_redacted() -> None:
    # given a record as uvicorn's access logger makes it (the path with its query string)
    token = f"{uuid.uuid4().hex}.1700000000.c2lnbmF0dXJl"
    record = logging.LogRecord(
        "uvicorn.access",
        logging.INFO,
        __file__,
        1,
        '%s - "%s %s HTTP/%s" %d',
        ("203.0.113.7:4242", "GET", f"/1.0/firmware/{token}/otb-1.1.3.img.gz?x=secret", "1.1", 200),
        None,
    )
    # when it passes the filter fleet.core installs on that logger
    assert AccessLogRedactFilter().filter(record)
    assert any(isinstance(f, AccessLogRedactFilter) for f in logging.getLogger("uvicorn.access").filters)
    # then the line keeps the route and the file, never the token nor the query string
    assert record.getMessage() == (
        f'203.0.113.7:4242 - "GET /1.0/firmware/{REDACTED}/otb-1.1.3.img.gz?{REDACTED} HTTP/1.1" 200'
    )
