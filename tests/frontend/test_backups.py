"""Configuration backups on the box page: the list, one backup, the comparison, the download, restore
and delete once confirmed, and nothing of another organisation."""

from __future__ import annotations

import base64
import io
import os
import tarfile
from typing import Any

import pytest
from django.test import Client, override_settings

from fleet.commands.backups import backup_create_with_files
from fleet.commands.choices import CommandKind
from fleet.commands.models import Backup, Command
from fleet.commands.services import command_create
from fleet.core.audit import Actor

pytestmark = pytest.mark.django_db


def logged_in(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


def make_backup(box: Any, files: dict[str, str]) -> Backup:
    command = command_create(actor=Actor.system("test"), box=box, kind=CommandKind.BACKUP)
    return backup_create_with_files(
        box=box,
        command_id=str(command.pk),
        files=[
            {
                "filename": name,
                "mode": "644",
                "uid": 0,
                "gid": 0,
                "is_symlink": False,
                "symlink": "",
                "content": text,
            }
            for name, text in files.items()
        ],
    )


@pytest.fixture
def box(box_factory: Any, people: Any) -> Any:
    return box_factory(organization=people.org)


def test_the_box_page_lists_backups_and_compares_two(people: Any, box: Any) -> None:
    old = make_backup(box, {"/etc/config/network": "option ipaddr '192.168.100.1'\n", "/etc/a": "a\n"})
    new = make_backup(box, {"/etc/config/network": "option ipaddr '10.0.0.1'\n", "/etc/a": "a\n"})
    viewer = logged_in(people.viewer)
    page = viewer.get(f"/boxes/{box.pk}/").content.decode()
    assert 'id="backups"' in page
    assert (
        f"/boxes/{box.pk}/backups/{old.pk}/" in page and f"/boxes/{box.pk}/backups/{new.pk}/archive/" in page
    )
    assert 'value="backup"' in logged_in(people.admin).get(f"/boxes/{box.pk}/").content.decode()  # a command
    # one backup shows its files and their text
    detail = viewer.get(f"/boxes/{box.pk}/backups/{new.pk}/").content.decode()
    assert "/etc/config/network" in detail and "option ipaddr &#x27;10.0.0.1&#x27;" in detail
    assert "Restore" not in detail  # a viewer may not restore
    # the comparison shows the changed file's unified diff, and says how many did not change
    diff = viewer.get(
        f"/boxes/{box.pk}/backups/diff/", {"old": str(old.pk), "new": str(new.pk)}
    ).content.decode()
    assert (
        "-option ipaddr &#x27;192.168.100.1&#x27;" in diff and "+option ipaddr &#x27;10.0.0.1&#x27;" in diff
    )
    assert "1 file unchanged" in diff and "/etc/a</h2>" not in diff
    # the download is the tar.gz
    archive = viewer.get(f"/boxes/{box.pk}/backups/{new.pk}/archive/")
    assert archive.status_code == 200
    with tarfile.open(fileobj=io.BytesIO(archive.content), mode="r:gz") as tar:
        assert sorted(tar.getnames()) == ["etc/a", "etc/config/network"]


def test_restore_and_delete_need_confirmation_and_an_admin(people: Any, box: Any) -> None:
    backup = make_backup(box, {"/etc/config/network": "x\n"})
    restore_url = f"/boxes/{box.pk}/backups/{backup.pk}/restore/"
    # a viewer is refused
    assert logged_in(people.viewer).post(restore_url, {"confirm": "on"}).status_code == 403
    admin = logged_in(people.admin)
    assert "Restore" in admin.get(f"/boxes/{box.pk}/backups/{backup.pk}/").content.decode()
    # without the confirmation nothing is sent, and the page says why
    refused = admin.post(restore_url, follow=True)
    assert "Tick the box to confirm" in refused.content.decode()
    assert not Command.objects.filter(kind=CommandKind.RESTORE).exists()
    # confirmed: a restore command of this backup is queued
    sent = admin.post(restore_url, {"confirm": "on"})
    assert sent.status_code == 302 and sent["Location"].endswith("#commands")
    command = Command.objects.get(kind=CommandKind.RESTORE)
    assert command.params == {"backup_id": str(backup.pk)}
    # delete, confirmed
    assert admin.post(f"/boxes/{box.pk}/backups/{backup.pk}/delete/").status_code == 302
    assert Backup.objects.filter(pk=backup.pk).exists()
    admin.post(f"/boxes/{box.pk}/backups/{backup.pk}/delete/", {"confirm": "on"})
    assert not Backup.objects.filter(pk=backup.pk).exists()


def test_another_organisations_backups_are_not_found(people: Any, box: Any) -> None:
    backup = make_backup(box, {"/etc/config/network": "x\n"})
    outsider = logged_in(people.outsider)
    for path in ("", "archive/"):
        assert outsider.get(f"/boxes/{box.pk}/backups/{backup.pk}/{path}").status_code == 404
    assert (
        outsider.get(
            f"/boxes/{box.pk}/backups/diff/", {"old": str(backup.pk), "new": str(backup.pk)}
        ).status_code
        == 404
    )
    assert outsider.post(f"/boxes/{box.pk}/backups/{backup.pk}/delete/", {"confirm": "on"}).status_code == 404
    assert Backup.objects.filter(pk=backup.pk).exists()
    # a bad id in the comparison is a 404 page, never a 500
    viewer = logged_in(people.viewer)
    assert (
        viewer.get(f"/boxes/{box.pk}/backups/diff/", {"old": "nope", "new": str(backup.pk)}).status_code
        == 404
    )


def test_a_backup_no_configured_key_opens_is_a_clear_page_not_a_500(people: Any, box: Any) -> None:
    # given two backups encrypted under a key that has since left OTB_SECRETS_KEYS
    with override_settings(OTB_SECRETS_KEYS=[base64.urlsafe_b64encode(os.urandom(32)).decode()]):
        old = make_backup(box, {"/etc/config/network": "option ipaddr '192.168.100.1'\n"})
        new = make_backup(box, {"/etc/config/network": "option ipaddr '10.0.0.1'\n"})
    viewer, admin = logged_in(people.viewer), logged_in(people.admin)
    # when a person opens it, compares it or downloads it: a 409 page saying why
    for response in (
        viewer.get(f"/boxes/{box.pk}/backups/{old.pk}/"),
        viewer.get(f"/boxes/{box.pk}/backups/diff/", {"old": str(old.pk), "new": str(new.pk)}),
        viewer.get(f"/boxes/{box.pk}/backups/{old.pk}/archive/"),
    ):
        assert response.status_code == 409
        page = response.content.decode()
        assert "cannot be decrypted with the configured keys (OTB_SECRETS_KEYS)" in page
        assert "Traceback" not in page
    # and a restore is refused with that message on the page, nothing queued
    refused = admin.post(f"/boxes/{box.pk}/backups/{old.pk}/restore/", {"confirm": "on"}, follow=True)
    assert "cannot be decrypted with the configured keys" in refused.content.decode()
    assert not Command.objects.filter(box=box, kind=CommandKind.RESTORE).exists()
    # the box page still lists the backups (no key needed for that)
    assert viewer.get(f"/boxes/{box.pk}/").status_code == 200
