"""The placement functions as provisioning/sql/placement.sql defines them now: the region is read from
``fleet_region``, and the choice of a server is one function, ``provisioning_best_server``, used by
``provisioning_place_box`` and by a reassignment (it was spelled again in Python)."""

from django.db import migrations

from provisioning.sql import definitions_sql


class Migration(migrations.Migration):
    dependencies = [
        ("provisioning", "0005_region_moves_to_fleet"),
        ("fleet", "0005_region_table"),
    ]

    operations = [migrations.RunSQL(definitions_sql("placement.sql"), migrations.RunSQL.noop)]
