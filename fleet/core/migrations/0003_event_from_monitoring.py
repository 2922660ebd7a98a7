"""The box timeline (Event) comes over from the monitoring app with its rows: the model is created in
the migration state on the existing table ``monitoring_event``, which is then renamed to
``fleet_event`` (a catalogue change: no row is copied), and its content type follows it."""

import uuid

import django.db.models.deletion
from django.db import migrations, models

KINDS = [
    ("session_opened", "Session opened"),
    ("session_closed", "Session closed"),
    ("box_online", "Box online"),
    ("box_offline", "Box offline"),
    ("wan_up", "WAN up"),
    ("wan_down", "WAN down"),
    ("config_applied", "Configuration applied"),
    ("config_failed", "Configuration failed"),
    ("firmware_changed", "Firmware changed"),
    ("command_finished", "Command finished"),
    ("alert_firing", "Alert firing"),
    ("alert_resolved", "Alert resolved"),
]


def content_type_to(app_label: str):
    def move(apps, schema_editor):
        content_type = apps.get_model("contenttypes", "ContentType")
        source = "monitoring" if app_label == "fleet" else "fleet"
        content_type.objects.using(schema_editor.connection.alias).filter(
            app_label=source, model="event"
        ).update(app_label=app_label)

    return move


class Migration(migrations.Migration):
    dependencies = [
        ("contenttypes", "0002_remove_content_type_name"),
        ("fleet", "0002_initial"),
        ("monitoring", "0003_event_moves_to_fleet"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.CreateModel(
                    name="Event",
                    fields=[
                        (
                            "id",
                            models.UUIDField(default=uuid.uuid4, editable=False, primary_key=True, serialize=False),
                        ),
                        ("kind", models.CharField(choices=KINDS, max_length=32)),
                        ("ts", models.DateTimeField()),
                        ("data", models.JSONField(blank=True, default=dict)),
                        (
                            "box",
                            models.ForeignKey(
                                on_delete=django.db.models.deletion.CASCADE, related_name="events", to="fleet.box"
                            ),
                        ),
                        (
                            "organization",
                            models.ForeignKey(
                                blank=True,
                                null=True,
                                on_delete=django.db.models.deletion.CASCADE,
                                related_name="events",
                                to="fleet.organization",
                            ),
                        ),
                    ],
                    options={
                        "ordering": ["-ts", "-id"],
                        "db_table": "monitoring_event",
                        "indexes": [
                            models.Index(fields=["box", "-ts"], name="event_box_ts_idx"),
                            models.Index(fields=["organization", "-ts"], name="event_org_ts_idx"),
                            models.Index(fields=["ts"], name="event_ts_idx"),
                        ],
                    },
                ),
            ],
            database_operations=[],
        ),
        migrations.AlterModelTable(name="event", table=None),
        migrations.RunPython(content_type_to("fleet"), content_type_to("monitoring")),
    ]
