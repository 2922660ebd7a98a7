"""Region moves to the fleet core (2 of 3): servers and pools point at ``fleet.Region`` and the
provisioning state forgets the model. State only: the table and its foreign keys stay as they are
(fleet's 0005 renames the table; PostgreSQL keeps the constraints through a rename)."""

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("provisioning", "0004_place_box_region"),
        ("fleet", "0004_region_from_provisioning"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AlterField(
                    model_name="aggregationserver",
                    name="region",
                    field=models.ForeignKey(
                        on_delete=django.db.models.deletion.PROTECT, related_name="servers", to="fleet.region"
                    ),
                ),
                migrations.AlterField(
                    model_name="addresspool",
                    name="region",
                    field=models.ForeignKey(
                        blank=True,
                        null=True,
                        on_delete=django.db.models.deletion.PROTECT,
                        related_name="pools",
                        to="fleet.region",
                    ),
                ),
                migrations.DeleteModel(name="Region"),
            ],
            database_operations=[],
        ),
    ]
