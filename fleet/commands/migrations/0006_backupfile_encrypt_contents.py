"""Backup file contents encrypted at rest, step 2 of 3: encrypt every existing row.

Each file's text is encrypted under the first key of ``OTB_SECRETS_KEYS`` into ``content_ciphertext``
(raw Fernet token bytes), its SHA-256 recorded, and its plaintext ``content`` emptied, ``BATCH`` rows per
transaction (the migration is not atomic: a large table is never locked as a whole, and an interrupted
run resumes where it stopped, on the rows still without ciphertext).

Reversible while a key that encrypted the rows is configured: going back decrypts into ``content``.
The plaintext stays in PostgreSQL's dead row versions (and in WAL archives and dumps) until the table
is rewritten: run ``VACUUM FULL commands_backupfile`` after migrating (docs/operations.md).
"""

import hashlib

from django.db import migrations, transaction

from fleet.core.secrets import secret_decrypt_bytes, secret_encrypt_bytes

BATCH = 200  # up to 200 x BACKUP_MAX_FILE_BYTES (128 KiB) of text in memory per transaction


def encrypt_contents(apps, schema_editor):
    BackupFile = apps.get_model("commands", "BackupFile")
    while True:
        with transaction.atomic():
            rows = list(
                BackupFile.objects.filter(content_ciphertext__isnull=True)
                .select_for_update()
                .order_by("pk")
                .only("pk", "content")[:BATCH]
            )
            if not rows:
                return
            for row in rows:
                data = row.content.encode("utf-8")
                row.content_ciphertext = secret_encrypt_bytes(data)
                row.sha256 = hashlib.sha256(data).hexdigest()
                row.content = ""
            BackupFile.objects.bulk_update(rows, ["content_ciphertext", "sha256", "content"])


def decrypt_contents(apps, schema_editor):
    BackupFile = apps.get_model("commands", "BackupFile")
    while True:
        with transaction.atomic():
            rows = list(
                BackupFile.objects.filter(content_ciphertext__isnull=False)
                .select_for_update()
                .order_by("pk")
                .only("pk", "content_ciphertext")[:BATCH]
            )
            if not rows:
                return
            for row in rows:
                row.content = secret_decrypt_bytes(bytes(row.content_ciphertext)).decode("utf-8")
                row.content_ciphertext = None
                row.sha256 = ""
            BackupFile.objects.bulk_update(rows, ["content_ciphertext", "sha256", "content"])


class Migration(migrations.Migration):
    atomic = False

    dependencies = [
        ("commands", "0005_backupfile_ciphertext"),
    ]

    operations = [
        migrations.RunPython(encrypt_contents, decrypt_contents, elidable=False),
    ]
