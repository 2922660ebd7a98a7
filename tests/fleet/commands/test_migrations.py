"""The data migration encrypting existing backup files (commands 0005-0007): forward in batches,
resumable, and back to plaintext while the key is configured."""

from __future__ import annotations

import hashlib
import importlib
from typing import Any

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

from fleet.commands.models import BackupFile

BEFORE = ("commands", "0005_backupfile_ciphertext")
AFTER = ("commands", "0007_backupfile_drop_plaintext")
SECRET = "\toption password 'Sh4d0wS0cks-s3cr3t'\n"


def migrate(target: tuple[str, str]) -> Any:
    """Migrate the commands app to ``target``; returns the historical apps at that state."""
    executor = MigrationExecutor(connection)
    executor.migrate([target])
    executor.loader.build_graph()
    return executor.loader.project_state(target).apps


@pytest.mark.django_db(transaction=True)
def test_existing_backup_files_are_encrypted_in_batches_and_can_go_back(
    box: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    step = importlib.import_module("fleet.commands.migrations.0006_backupfile_encrypt_contents")
    monkeypatch.setattr(step, "BATCH", 2)  # five rows: three batches
    try:
        # given files stored in clear before the migration
        old_apps = migrate(BEFORE)
        backup = old_apps.get_model("commands", "Backup").objects.create(box_id=box.pk, source="agent")
        texts = {f"/etc/config/f{index}": f"config x\n{SECRET}{index}\n" for index in range(5)}
        for filename, text in texts.items():
            old_apps.get_model("commands", "BackupFile").objects.create(
                backup_id=backup.pk, filename=filename, mode=0o600, content=text, size_bytes=len(text)
            )
        # when the migration runs
        migrate(AFTER)
        # then no row holds the plaintext, each decrypts to its text and carries the text's checksum
        with connection.cursor() as cursor:
            cursor.execute("SELECT row_to_json(f)::text FROM commands_backupfile f")
            raw = " ".join(row[0] for row in cursor.fetchall())
        assert "Sh4d0wS0cks" not in raw and "config x" not in raw
        stored = {file.filename: file for file in BackupFile.objects.filter(backup_id=backup.pk)}
        assert {name: file.content for name, file in stored.items()} == texts
        assert all(
            file.sha256 == hashlib.sha256(texts[name].encode()).hexdigest() for name, file in stored.items()
        )
        # and going back restores the plaintext
        old_apps = migrate(BEFORE)
        back = old_apps.get_model("commands", "BackupFile").objects.filter(backup_id=backup.pk)
        assert {file.filename: (file.content, file.content_ciphertext) for file in back} == {
            name: (text, None) for name, text in texts.items()
        }
    finally:
        migrate(AFTER)
