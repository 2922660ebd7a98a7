"""Backup file contents encrypted at rest, step 1 of 3: the new columns, nullable while rows are filled."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("commands", "0004_otb_kinds"),
    ]

    operations = [
        migrations.AddField(
            model_name="backupfile",
            name="content_ciphertext",
            field=models.BinaryField(null=True),
        ),
        migrations.AddField(
            model_name="backupfile",
            name="sha256",
            field=models.CharField(default="", max_length=64),
            preserve_default=False,
        ),
    ]
