"""Region comes over from provisioning (1 of 3): the model is created in the fleet app's migration
state on the existing table ``provisioning_region`` (no database change), and the organisation's
preferred region points at it. provisioning's 0005 repoints its own foreign keys and drops its state;
fleet's 0005 renames the table."""

import uuid

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("fleet", "0003_event_from_monitoring"),
        ("provisioning", "0004_place_box_region"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.CreateModel(
                    name="Region",
                    fields=[
                        (
                            "id",
                            models.UUIDField(default=uuid.uuid4, editable=False, primary_key=True, serialize=False),
                        ),
                        ("code", models.SlugField(max_length=32, unique=True)),
                        ("name", models.CharField(max_length=100)),
                    ],
                    options={"ordering": ["code"], "db_table": "provisioning_region"},
                ),
                migrations.AlterField(
                    model_name="organization",
                    name="preferred_region",
                    field=models.ForeignKey(
                        blank=True,
                        null=True,
                        on_delete=django.db.models.deletion.SET_NULL,
                        related_name="+",
                        to="fleet.region",
                    ),
                ),
            ],
            database_operations=[],
        ),
    ]
