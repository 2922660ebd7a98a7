"""Backup file contents encrypted at rest, step 3 of 3: the plaintext column goes and the ciphertext
is required. Going back re-creates ``content`` empty (the previous migration refills it)."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("commands", "0006_backupfile_encrypt_contents"),
    ]

    operations = [
        migrations.RemoveField(
            model_name="backupfile",
            name="content",
        ),
        migrations.AlterField(
            model_name="backupfile",
            name="content_ciphertext",
            field=models.BinaryField(),
        ),
        migrations.AlterField(
            model_name="backupfile",
            name="sha256",
            field=models.CharField(help_text="SHA-256 (hex) of the content's UTF-8 bytes", max_length=64),
        ),
    ]
