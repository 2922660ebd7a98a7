"""Region moves to the fleet core (3 of 3): its table is renamed ``fleet_region`` (a catalogue change,
no row copied) and its content type follows it."""

from django.db import migrations


def content_type_to(app_label: str):
    def move(apps, schema_editor):
        content_type = apps.get_model("contenttypes", "ContentType")
        source = "provisioning" if app_label == "fleet" else "fleet"
        content_type.objects.using(schema_editor.connection.alias).filter(
            app_label=source, model="region"
        ).update(app_label=app_label)

    return move


class Migration(migrations.Migration):
    dependencies = [
        ("contenttypes", "0002_remove_content_type_name"),
        ("fleet", "0004_region_from_provisioning"),
        ("provisioning", "0005_region_moves_to_fleet"),
    ]

    operations = [
        migrations.AlterModelTable(name="region", table=None),
        migrations.RunPython(content_type_to("fleet"), content_type_to("provisioning")),
    ]
