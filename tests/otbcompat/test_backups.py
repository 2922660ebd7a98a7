"""The /1.0 backup routes of a stock OverTheBox box: POST a backup for its action, PUT one file per call
(pretty-printed, as the box's jq writes them), GET a download link that works without credentials,
and only ever for the box's own backups."""

from __future__ import annotations

import base64
import io
import json
import os
import tarfile
from datetime import timedelta
from typing import Any

import pytest
from django.conf import settings
from django.test import Client
from django.test.utils import override_settings
from django.utils import timezone

from fleet.commands.choices import CommandKind
from fleet.commands.models import Backup, BackupFile, Command
from fleet.commands.services import command_create
from fleet.core.audit import Actor
from fleet.core.choices import BoxProtocol
from otbcompat.models import OtbDevice
from otbcompat.services import device_subscribe, service_name

pytestmark = pytest.mark.django_db

NETWORK = "config interface 'lan'\n\toption proto 'static'\n\toption ipaddr '192.168.100.1'"


def otb_call(client: Client, method: str, path: str, body: Any = None, jwt: str = "") -> Any:
    headers: dict[str, Any] = {"HTTP_X_OVERTHEBOX_VERSION": "1.1.3"}
    if jwt:
        headers["HTTP_AUTHORIZATION"] = f"Bearer {jwt}"
    data = body if isinstance(body, str) else (json.dumps(body, indent=2) if body is not None else "")
    return client.generic(method, f"/1.0/{path}", data, content_type="application/json", **headers)


class LinkedBox:
    """A subscribed device linked to a claimed box, as a claim leaves it."""

    def __init__(self, box: Any, mac: str) -> None:
        subscription = device_subscribe({"macaddr": mac, "board": "apu2"}, source_ip=f"198.51.100.{mac[-1]}")
        OtbDevice.objects.filter(id=subscription.device.id).update(box=box, linked_at=timezone.now())
        box.protocol = BoxProtocol.OTB
        box.save(update_fields=["protocol"])
        self.box, self.device_id, self.jwt = box, str(subscription.device.id), subscription.jwt
        self.service = service_name(box)

    def path(self, sub: str) -> str:
        return f"devices/{self.device_id}/service/{self.service}/{sub}"

    def backup_action(self) -> Command:
        return command_create(actor=Actor.system("test"), box=self.box, kind=CommandKind.BACKUP)

    def start(self, client: Client) -> str:
        response = otb_call(
            client, "POST", self.path("backups"), {"device_action_id": str(self.backup_action().pk)}, self.jwt
        )
        assert response.status_code == 200, response.content
        return str(response.json()["backup_id"])


def box_file(filename: str, content: Any = NETWORK, **extra: Any) -> dict[str, Any]:
    """A file as the box's backup script builds it with jq (mode the text of ``stat -c %a``)."""
    return {
        "filename": filename,
        "mode": "644",
        "uid": 0,
        "gid": 0,
        "is_symlink": False,
        "symlink": "",
        "content": content,
        **extra,
    }


@pytest.fixture
def ours(box_factory: Any, people: Any) -> LinkedBox:
    return LinkedBox(box_factory(organization=people.org), "00:0d:b9:4a:11:21")


@pytest.fixture
def theirs(box_factory: Any, people: Any) -> LinkedBox:
    return LinkedBox(box_factory(organization=people.other_org), "00:0d:b9:4a:11:22")


def test_backup_upload_then_restore_link_serves_the_tar_gz(ours: LinkedBox) -> None:
    client = Client()
    backup_id = ours.start(client)
    files = [
        box_file("/etc/config/network", mode="600"),
        box_file("/etc/config/system", "config system\n\toption hostname 'otb'"),
        box_file(
            "/etc/localtime", "", is_symlink=True, symlink="/usr/share/zoneinfo/Europe/Paris", mode="777"
        ),
    ]
    for item in files:
        response = otb_call(client, "PUT", ours.path(f"backups/{backup_id}"), item, ours.jwt)
        assert response.status_code == 200, response.content
    backup = Backup.objects.get(pk=backup_id)
    assert (backup.box_id, backup.source, backup.file_count) == (ours.box.pk, "otb", 3)
    assert backup.command is not None and backup.command.kind == "backup"
    # a second PUT of one path replaces it (the box retried)
    again = otb_call(
        client, "PUT", ours.path(f"backups/{backup_id}"), box_file("/etc/config/network"), ours.jwt
    )
    assert again.status_code == 200
    assert Backup.objects.get(pk=backup_id).file_count == 3
    assert BackupFile.objects.get(backup_id=backup_id, filename="/etc/config/network").mode == 0o644

    # restore: the box asks for the link, then fetches it with plain curl (no header at all)
    link = otb_call(client, "GET", ours.path(f"backups/{backup_id}"), jwt=ours.jwt)
    assert link.status_code == 200, link.content
    url = link.json()["backup_url"]
    # an absolute http URL whose last part carries an HMAC signature (43 characters of base64)
    assert url.startswith("http://testserver/1.0/backup_archives/") and len(url.rsplit(".", 1)[1]) >= 43
    archive = Client().get(url.removeprefix("http://testserver"))
    assert archive.status_code == 200 and archive["Content-Type"] == "application/gzip"
    with tarfile.open(fileobj=io.BytesIO(archive.content), mode="r:gz") as tar:
        members = {member.name: member for member in tar.getmembers()}
        assert set(members) == {"etc/config/network", "etc/config/system", "etc/localtime"}
        assert members["etc/localtime"].issym()
        assert members["etc/localtime"].linkname == "/usr/share/zoneinfo/Europe/Paris"
        extracted = tar.extractfile(members["etc/config/network"])
        assert extracted is not None and extracted.read().decode() == NETWORK


def test_a_body_with_literal_newlines_in_content_is_accepted(ours: LinkedBox) -> None:
    client = Client()
    backup_id = ours.start(client)
    raw = '{\n  "filename": "/etc/config/dhcp",\n  "mode": "644",\n  "uid": 0,\n  "gid": 0,\n'
    raw += (
        '  "is_symlink": false,\n  "symlink": "",\n  "content": "config dnsmasq\n\toption domain \'lan\'"\n}'
    )
    response = otb_call(client, "PUT", ours.path(f"backups/{backup_id}"), raw, ours.jwt)
    assert response.status_code == 200, response.content
    stored = BackupFile.objects.get(backup_id=backup_id)
    assert stored.content == "config dnsmasq\n\toption domain 'lan'"


def test_a_download_link_expires_and_a_forged_one_is_refused(ours: LinkedBox) -> None:
    client = Client()
    backup_id = ours.start(client)
    otb_call(client, "PUT", ours.path(f"backups/{backup_id}"), box_file("/etc/config/network"), ours.jwt)
    path = otb_call(client, "GET", ours.path(f"backups/{backup_id}"), jwt=ours.jwt).json()["backup_url"]
    path = path.removeprefix("http://testserver")
    assert Client().get(path).status_code == 200
    forged = path[:-2] + ("AA" if not path.endswith("AA") else "BB")
    refused = Client().get(forged)
    assert refused.status_code == 404 and refused.json()["class"] == "Client::NotFound"
    with override_settings(OTB={**settings.OTB, "BACKUP_URL_TTL_S": -1}):
        expired = Client().get(path)
    assert expired.status_code == 404


def test_a_box_never_reaches_another_boxs_backup(ours: LinkedBox, theirs: LinkedBox) -> None:
    client = Client()
    our_backup = ours.start(client)
    otb_call(client, "PUT", ours.path(f"backups/{our_backup}"), box_file("/etc/config/network"), ours.jwt)
    # their box, with its own service, asks for our backup id: not found, and nothing is written
    for method, body in (("GET", None), ("PUT", box_file("/etc/config/evil", "x"))):
        response = otb_call(client, method, theirs.path(f"backups/{our_backup}"), body, theirs.jwt)
        assert response.status_code == 404, (method, response.content)
        assert response.json()["class"] == "Client::NotFound"
    # their JWT on our device id, or our service on their device: forbidden
    stolen = otb_call(client, "GET", ours.path(f"backups/{our_backup}"), jwt=theirs.jwt)
    assert stolen.status_code == 403 and stolen.json()["class"] == "Client::Forbidden"
    cross = f"devices/{theirs.device_id}/service/{ours.service}/backups/{our_backup}"
    assert otb_call(client, "GET", cross, jwt=theirs.jwt).status_code == 403
    # their box cannot start a backup on our backup action
    action = ours.backup_action()
    started = otb_call(
        client, "POST", theirs.path("backups"), {"device_action_id": str(action.pk)}, theirs.jwt
    )
    assert started.status_code == 400 and started.json()["message"].startswith("device_action_id:")
    assert BackupFile.objects.filter(backup_id=our_backup).count() == 1
    assert Backup.objects.count() == 1
    # no JWT: 401 in the class the box renews on
    anonymous = otb_call(client, "GET", ours.path(f"backups/{our_backup}"))
    assert anonymous.status_code == 401 and anonymous.json()["class"] == "Client::Unauthorized"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "device_action_id"),
        ({"device_action_id": None}, "device_action_id"),
        ({"device_action_id": ["x"]}, "device_action_id"),
        ({"device_action_id": "12"}, "device_action_id"),
        ("[1, 2]", "device_action_id"),
    ],
)
def test_start_bad_input_names_the_field_and_writes_nothing(ours: LinkedBox, body: Any, field: str) -> None:
    response = otb_call(Client(), "POST", ours.path("backups"), body, ours.jwt)
    assert response.status_code == 400, response.content
    assert response.json()["class"] == "Client::BadRequest"
    assert response.json()["message"].startswith(f"{field}:")
    assert not Backup.objects.exists()


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (box_file("etc/config/network"), "filename"),
        (box_file("/etc/config/../shadow"), "filename"),
        ({**box_file("/etc/x"), "filename": None}, "filename"),
        (box_file("/etc/x", mode="rw-r--r--"), "mode"),
        (box_file("/etc/x", mode=644), "mode"),
        (box_file("/etc/x", uid="0"), "uid"),
        (box_file("/etc/x", gid=-2), "gid"),
        (box_file("/etc/x", is_symlink="false"), "is_symlink"),
        (box_file("/etc/x", is_symlink=True, symlink=""), "symlink"),
        (box_file("/etc/x", content=5), "content"),
        (box_file("/etc/x", content="a\u0000b"), "content"),
        ('{"filename": "/etc/x", "mode": "644", "content": "a\\ud800b"}', "content"),
        ('{"filename": "/etc/\\udfff", "mode": "644", "content": ""}', "filename"),
        ("{not json", "body"),
        ("[]", "body"),
    ],
)
def test_file_bad_input_names_the_field_and_writes_nothing(ours: LinkedBox, body: Any, field: str) -> None:
    client = Client()
    backup_id = ours.start(client)
    response = otb_call(client, "PUT", ours.path(f"backups/{backup_id}"), body, ours.jwt)
    assert response.status_code == 400, response.content
    assert response.json()["class"] == "Client::BadRequest"
    assert response.json()["message"].startswith(f"{field}:"), response.json()
    assert not BackupFile.objects.exists()
    assert Backup.objects.get(pk=backup_id).file_count == 0


@override_settings(
    OTB={**settings.OTB, "BACKUP_MAX_FILES": 2, "BACKUP_MAX_BYTES": 30, "BACKUP_MAX_FILE_BYTES": 20}
)
def test_a_backup_stays_within_its_bounds(ours: LinkedBox) -> None:
    client = Client()
    backup_id = ours.start(client)
    put = ours.path(f"backups/{backup_id}")
    assert otb_call(client, "PUT", put, box_file("/etc/a", "x" * 20), ours.jwt).status_code == 200
    too_big = otb_call(client, "PUT", put, box_file("/etc/b", "x" * 21), ours.jwt)
    assert too_big.status_code == 400 and too_big.json()["message"].startswith("content:")
    over_total = otb_call(client, "PUT", put, box_file("/etc/b", "x" * 11), ours.jwt)
    assert over_total.status_code == 400 and over_total.json()["message"].startswith("content:")
    assert otb_call(client, "PUT", put, box_file("/etc/b", "x" * 5), ours.jwt).status_code == 200
    third = otb_call(client, "PUT", put, box_file("/etc/c", "x"), ours.jwt)
    assert third.status_code == 400 and third.json()["message"].startswith("filename:")
    backup = Backup.objects.get(pk=backup_id)
    assert (backup.file_count, backup.size_bytes) == (2, 25)
    assert sorted(BackupFile.objects.values_list("filename", flat=True)) == ["/etc/a", "/etc/b"]


def test_a_backup_closes_after_its_upload_window(ours: LinkedBox) -> None:
    client = Client()
    backup_id = ours.start(client)
    Backup.objects.filter(pk=backup_id).update(created_at=timezone.now() - timedelta(hours=1))
    late = otb_call(client, "PUT", ours.path(f"backups/{backup_id}"), box_file("/etc/late"), ours.jwt)
    assert late.status_code == 400 and late.json()["message"].startswith("backup_id:")
    assert not BackupFile.objects.exists()


def test_unknown_backup_ids_and_methods(ours: LinkedBox) -> None:
    client = Client()
    for backup_id in ("nope", "00000000-0000-0000-0000-000000000000"):
        response = otb_call(client, "GET", ours.path(f"backups/{backup_id}"), jwt=ours.jwt)
        assert response.status_code == 404 and response.json()["class"] == "Client::NotFound"
    assert otb_call(client, "DELETE", ours.path("backups/x"), jwt=ours.jwt).status_code == 405
    assert otb_call(client, "GET", ours.path("backups"), jwt=ours.jwt).status_code == 405
    assert otb_call(client, "GET", ours.path("backups/"), jwt=ours.jwt).status_code == 404


def test_restore_of_an_encrypted_backup_gives_the_box_its_bytes_modes_and_owners(ours: LinkedBox) -> None:
    # given a stock box that backed up a secret-bearing file (stored encrypted, never in clear)
    secret = "config server 'ss'\n\toption password 'Sh4d0wS0cks-s3cr3t'\n"
    client = Client()
    backup_id = ours.start(client)
    for item in (
        box_file("/etc/config/shadowsocks-libev", secret, mode="600"),
        box_file("/etc/dropbear/authorized_keys", "ssh-ed25519 AAAA otb\n", mode="640", uid=0, gid=1000),
    ):
        assert otb_call(client, "PUT", ours.path(f"backups/{backup_id}"), item, ours.jwt).status_code == 200
    stored = BackupFile.objects.get(backup_id=backup_id, filename="/etc/config/shadowsocks-libev")
    assert b"Sh4d0wS0cks" not in bytes(stored.content_ciphertext)
    # when a restore is queued (its action carries the backup id: tests/otbcompat/test_actions.py), the
    # box asks for the link and follows it with plain curl
    restore = command_create(
        actor=Actor.system("test"), box=ours.box, kind=CommandKind.RESTORE, params={"backup_id": backup_id}
    )
    assert restore.params == {"backup_id": backup_id}
    url = otb_call(client, "GET", ours.path(f"backups/{backup_id}"), jwt=ours.jwt).json()["backup_url"]
    archive = Client().get(url.removeprefix("http://testserver"))
    # then the tar.gz holds the original bytes with their modes and owners
    assert archive.status_code == 200
    with tarfile.open(fileobj=io.BytesIO(archive.content), mode="r:gz") as tar:
        members = {member.name: member for member in tar.getmembers()}
        ss = tar.extractfile(members["etc/config/shadowsocks-libev"])
        assert ss is not None and ss.read() == secret.encode()
        assert members["etc/config/shadowsocks-libev"].mode == 0o600
        keys = members["etc/dropbear/authorized_keys"]
        assert (keys.mode, keys.uid, keys.gid) == (0o640, 0, 1000)


def test_an_archive_no_configured_key_opens_is_a_clear_error_for_the_box(ours: LinkedBox) -> None:
    # given a backup encrypted under a key that has since been removed
    client = Client()
    with override_settings(OTB_SECRETS_KEYS=[base64.urlsafe_b64encode(os.urandom(32)).decode()]):
        backup_id = ours.start(client)
        otb_call(client, "PUT", ours.path(f"backups/{backup_id}"), box_file("/etc/config/network"), ours.jwt)
    url = otb_call(client, "GET", ours.path(f"backups/{backup_id}"), jwt=ours.jwt).json()["backup_url"]
    # when the box downloads it
    response = Client().get(url.removeprefix("http://testserver"))
    # then it gets the protocol's error shape naming the cause, not a 500
    assert response.status_code == 400, response.content
    assert response.json()["class"] == "Client::BadRequest"
    assert "cannot be decrypted with the configured keys" in response.json()["message"]
