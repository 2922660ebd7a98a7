"""Configuration backups encrypted at rest: no plaintext in the stored row, every reader (file, diff,
tar.gz, agent restore) gives the original text back, key rotation with ``manage.py
secrets_reencrypt``, a clear 409 for a backup no configured key opens, and retention sparing a
backup that an open restore names."""

from __future__ import annotations

import base64
import hashlib
import io
import os
import tarfile
from typing import Any

import pytest
from django.conf import settings
from django.core.management import CommandError, call_command
from django.db import connection
from django.test.utils import override_settings

from fleet.commands.backups import backup_create_with_files, backups_prune
from fleet.commands.choices import CommandKind, CommandState
from fleet.commands.models import Backup, BackupFile, Command
from fleet.commands.services import command_create
from fleet.core.audit import Actor
from fleet.core.models import AuditLog
from fleet.core.secrets import secret_decrypt, secret_encrypt
from fleet.monitoring.models import NotificationTarget
from tests.fleet.commands.test_backups import file

pytestmark = pytest.mark.django_db

SECRET_LINE = "\toption password 'Sh4d0wS0cks-s3cr3t-p4ssw0rd'\n"
SHADOWSOCKS = f"config server 'ss'\n\toption server '203.0.113.7'\n{SECRET_LINE}"
WIREGUARD = "config interface 'wg0'\n\toption private_key 'eIz0qXyA9p8GdcBvM1kV3rN7tL2wH6sJ5uF4gE0Q1n8='\n"


def fernet_key() -> str:
    return base64.urlsafe_b64encode(os.urandom(32)).decode()


def make_backup(box: Any, files: list[dict[str, Any]]) -> Backup:
    command = command_create(actor=Actor.system("test"), box=box, kind=CommandKind.BACKUP)
    return backup_create_with_files(box=box, command_id=str(command.pk), files=files)


@pytest.fixture
def agent(box: Any, agent_token_factory: Any, api_client: Any) -> Any:
    api_client.credentials(HTTP_AUTHORIZATION=f"Bearer {agent_token_factory(box)}")
    return api_client


def stored_row_text(backup: Backup) -> str:
    """Every column of the backup's file rows as PostgreSQL has them, bytea decoded as Latin-1 so any
    plaintext byte sequence would show."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT row_to_json(f)::text, content_ciphertext FROM commands_backupfile f WHERE backup_id = %s",
            [backup.pk],
        )
        return "".join(text + bytes(raw).decode("latin-1") for text, raw in cursor.fetchall())


def test_the_stored_row_holds_no_plaintext_of_a_secret_line(agent: Any, box: Any) -> None:
    # given an agent uploading /etc/config with a shadowsocks password and a WireGuard private key
    response = agent.post(
        "/api/v1/agent/backups",
        {
            "command_id": str(command_create(actor=Actor.system("t"), box=box, kind=CommandKind.BACKUP).pk),
            "files": [
                file("/etc/config/shadowsocks-libev", SHADOWSOCKS),
                file("/etc/config/network", WIREGUARD),
            ],
        },
        format="json",
    )
    assert response.status_code == 201, response.content
    backup = Backup.objects.get(pk=response.json()["id"])
    # when the rows are read as PostgreSQL stores them
    raw = stored_row_text(backup)
    # then neither secret, nor any line of the files, is there in clear; only the checksum of the text is
    assert (
        "Sh4d0wS0cks-s3cr3t-p4ssw0rd" not in raw and "eIz0qXyA9p8GdcBvM1kV3rN7tL2wH6sJ5uF4gE0Q1n8" not in raw
    )
    assert "option server" not in raw and "config interface" not in raw
    stored = BackupFile.objects.get(backup=backup, filename="/etc/config/shadowsocks-libev")
    assert stored.sha256 == hashlib.sha256(SHADOWSOCKS.encode()).hexdigest()
    # the raw token: 57 to 73 bytes over the plaintext, not the 4/3 of base64
    assert 57 <= len(bytes(stored.content_ciphertext)) - len(SHADOWSOCKS.encode()) <= 73
    # and the model decrypts it
    assert BackupFile.objects.get(pk=stored.pk).content == SHADOWSOCKS


def test_upload_view_diff_archive_and_agent_restore_give_the_original_bytes(
    agent: Any, box: Any, people: Any, client_for: Any
) -> None:
    # given two backups of a box: the shadowsocks password changed, the network file did not
    text = "héllo ünïcode\r\nno final newline"
    old = make_backup(
        box, [file("/etc/config/shadowsocks-libev", SHADOWSOCKS, mode="600"), file("/etc/banner", text)]
    )
    changed = SHADOWSOCKS.replace("Sh4d0wS0cks", "N3wP4ss")
    new = make_backup(
        box,
        [
            file("/etc/config/shadowsocks-libev", changed, mode="600", uid=0, gid=0),
            file("/etc/banner", text, uid=1000, gid=100),
            file("/etc/localtime", is_symlink=True, symlink="/usr/share/zoneinfo/UTC", mode="777"),
        ],
    )
    viewer = client_for(people.viewer)
    # when a person views a file: the text as uploaded, its checksum and size of the plaintext
    one = viewer.get(f"/api/v1/boxes/{box.pk}/backups/{old.pk}/file", {"path": "/etc/banner"})
    assert one.status_code == 200, one.content
    body = one.json()
    assert body["content"] == text and body["size_bytes"] == len(text.encode())
    assert body["sha256"] == hashlib.sha256(text.encode()).hexdigest()
    detail = viewer.get(f"/api/v1/boxes/{box.pk}/backups/{old.pk}/").json()
    assert {f["filename"]: f["sha256"] for f in detail["files"]}["/etc/banner"] == body["sha256"]
    # the diff shows the changed password line, and the unchanged text as unchanged (owner aside)
    diff = viewer.get(f"/api/v1/boxes/{box.pk}/backups/diff", {"old": old.pk, "new": new.pk}).json()
    by_name = {item["filename"]: item for item in diff["files"]}
    assert (
        "-\toption password 'Sh4d0wS0cks-s3cr3t-p4ssw0rd'" in by_name["/etc/config/shadowsocks-libev"]["diff"]
    )
    assert "+\toption password 'N3wP4ss-s3cr3t-p4ssw0rd'" in by_name["/etc/config/shadowsocks-libev"]["diff"]
    assert by_name["/etc/banner"]["diff"] == "" and by_name["/etc/banner"]["meta"] == (
        "mode 644, owner 0:0 -> mode 644, owner 1000:100"
    )
    assert by_name["/etc/localtime"]["status"] == "added"
    # the tar.gz holds the original bytes with modes and owners
    archive = viewer.get(f"/api/v1/boxes/{box.pk}/backups/{new.pk}/archive")
    assert archive.status_code == 200
    with tarfile.open(fileobj=io.BytesIO(archive.content), mode="r:gz") as tar:
        members = {member.name: member for member in tar.getmembers()}
        banner = tar.extractfile(members["etc/banner"])
        assert banner is not None and banner.read() == text.encode()
        assert (members["etc/banner"].uid, members["etc/banner"].gid) == (1000, 100)
        assert members["etc/config/shadowsocks-libev"].mode == 0o600
        assert (
            members["etc/localtime"].issym()
            and members["etc/localtime"].linkname == "/usr/share/zoneinfo/UTC"
        )
    # and the agent restoring it fetches every file with its text, mode and owner
    restore = client_for(people.admin).post(f"/api/v1/boxes/{box.pk}/backups/{new.pk}/restore")
    assert restore.status_code == 201, restore.content
    fetched = agent.get(f"/api/v1/agent/backups/{new.pk}")
    assert fetched.status_code == 200, fetched.content
    files = {item["filename"]: item for item in fetched.json()["files"]}
    assert files["/etc/config/shadowsocks-libev"]["content"] == changed
    assert files["/etc/config/shadowsocks-libev"]["mode"] == "600"
    assert (files["/etc/banner"]["content"], files["/etc/banner"]["uid"], files["/etc/banner"]["gid"]) == (
        text,
        1000,
        100,
    )
    assert files["/etc/localtime"]["is_symlink"] and files["/etc/localtime"]["content"] == ""


def test_rotation_reencrypts_backups_then_the_old_key_can_go(box: Any, people: Any, client_for: Any) -> None:
    old_key, new_key = fernet_key(), fernet_key()
    # given a backup encrypted under the old key
    with override_settings(OTB_SECRETS_KEYS=[old_key]):
        backup = make_backup(box, [file("/etc/config/shadowsocks-libev", SHADOWSOCKS)])
        before = bytes(BackupFile.objects.get(backup=backup).content_ciphertext)
        webhook = NotificationTarget.objects.create(
            organization=people.org,
            name="hook",
            kind="webhook",
            url="https://hooks.example.com/otb",
            secret_ciphertext=secret_encrypt("webhook-signing-secret"),
        )
    # when a new key is put first and the rotation command runs
    out = io.StringIO()
    with override_settings(OTB_SECRETS_KEYS=[new_key, old_key]):
        call_command("secrets_reencrypt", "--batch-size", "1", stdout=out)
    # then it reports every encrypted column, backups included, and audits the run
    report = out.getvalue()
    assert "commands.BackupFile.content_ciphertext: 1 re-encrypted" in report
    assert "provisioning.TunnelCredential.secret_ciphertext" in report
    assert "monitoring.NotificationTarget.secret_ciphertext: 1 re-encrypted" in report
    assert AuditLog.objects.filter(action="secrets.reencrypt").exists()
    after = bytes(BackupFile.objects.get(backup=backup).content_ciphertext)
    assert after != before
    # and with the old key removed the backup still reads, through the API as well
    with override_settings(OTB_SECRETS_KEYS=[new_key]):
        assert BackupFile.objects.get(backup=backup).content == SHADOWSOCKS
        webhook.refresh_from_db()
        assert secret_decrypt(webhook.secret_ciphertext) == "webhook-signing-secret"
        response = client_for(people.viewer).get(
            f"/api/v1/boxes/{box.pk}/backups/{backup.pk}/file", {"path": "/etc/config/shadowsocks-libev"}
        )
        assert response.status_code == 200 and response.json()["content"] == SHADOWSOCKS


def test_a_backup_no_configured_key_opens_gives_a_clear_409(box: Any, people: Any, client_for: Any) -> None:
    # given a backup encrypted under a key that is no longer configured
    lost = fernet_key()
    with override_settings(OTB_SECRETS_KEYS=[lost]):
        backup = make_backup(box, [file("/etc/config/network", WIREGUARD)])
        other = make_backup(box, [file("/etc/config/network", SHADOWSOCKS)])
    viewer, admin = client_for(people.viewer), client_for(people.admin)
    base = f"/api/v1/boxes/{box.pk}/backups"
    # when people read it, compare it, download it or restore it
    answers = [
        viewer.get(f"{base}/{backup.pk}/file", {"path": "/etc/config/network"}),
        viewer.get(f"{base}/diff", {"old": backup.pk, "new": other.pk}),
        viewer.get(f"{base}/{backup.pk}/archive"),
        admin.post(f"{base}/{backup.pk}/restore"),
        admin.post(
            f"/api/v1/boxes/{box.pk}/commands/",
            {"kind": "restore", "params": {"backup_id": str(backup.pk)}},
            format="json",
        ),
    ]
    # then each is a 409 saying what is wrong, in the API's error shape (no traceback, no 500)
    for response in answers:
        assert response.status_code == 409, response.content
        error = response.json()["error"]
        assert error["code"] == "backup_unreadable"
        assert "cannot be decrypted with the configured keys (OTB_SECRETS_KEYS)" in error["message"]
        assert "Traceback" not in response.content.decode()
    # no restore command was queued for a backup the box could not be served
    assert not Command.objects.filter(box=box, kind=CommandKind.RESTORE).exists()
    # the listing and the metadata need no key
    assert viewer.get(f"{base}/{backup.pk}/").status_code == 200
    # and the rotation command leaves the row as it was and says so, failing
    stored = bytes(BackupFile.objects.get(backup=backup).content_ciphertext)
    out = io.StringIO()
    with pytest.raises(CommandError, match="keep the old keys"):
        call_command("secrets_reencrypt", stdout=out)
    assert "commands.BackupFile.content_ciphertext: 0 re-encrypted, 2 undecryptable" in out.getvalue()
    assert bytes(BackupFile.objects.get(backup=backup).content_ciphertext) == stored


@override_settings(OTB={**settings.OTB, "BACKUP_KEEP_PER_BOX": 2})
def test_retention_never_prunes_a_backup_an_open_restore_names(box: Any, people: Any) -> None:
    # given the oldest of two backups named by a pending restore, and another by a finished one
    restored = make_backup(box, [file("/etc/a", "a\n")])
    done = make_backup(box, [file("/etc/b", "b\n")])
    pending = command_create(
        actor=Actor.system("t"), box=box, kind=CommandKind.RESTORE, params={"backup_id": str(restored.pk)}
    )
    finished = command_create(
        actor=Actor.system("t"), box=box, kind=CommandKind.RESTORE, params={"backup_id": str(done.pk)}
    )
    Command.objects.filter(pk=finished.pk).update(state=CommandState.SUCCEEDED)
    # when two newer backups push both beyond the two kept
    make_backup(box, [file("/etc/c", "c\n")])
    make_backup(box, [file("/etc/d", "d\n")])
    # then the one the pending restore names is kept (over the count), the other is pruned
    assert Backup.objects.filter(pk=restored.pk).exists()
    assert not Backup.objects.filter(pk=done.pk).exists()
    assert Backup.objects.filter(box=box).count() == 3
    # also while the box runs it
    Command.objects.filter(pk=pending.pk).update(state=CommandState.RUNNING)
    assert backups_prune(box_id=box.pk) == 0
    # and once the restore is over, the next pruning removes it
    Command.objects.filter(pk=pending.pk).update(state=CommandState.SUCCEEDED)
    assert backups_prune(box_id=box.pk) == 1
    assert not Backup.objects.filter(pk=restored.pk).exists()
