"""provisioning_place_box(): the locked part of provisioning a box, in one round trip.

The functions are defined in provisioning/sql/placement.sql (their one current definition, loaded
again by later migrations when it changes); see that file for why the locked work runs server-side.
"""

from django.db import migrations

from provisioning.sql import definitions_sql

DROP = """
DROP FUNCTION IF EXISTS provisioning_place_box(uuid, uuid, uuid, text[]);
DROP FUNCTION IF EXISTS provisioning_best_server(uuid, uuid);
DROP FUNCTION IF EXISTS provisioning_lowest_free_index(uuid, bigint);
DROP FUNCTION IF EXISTS provisioning_lowest_free_port(uuid, integer);
"""


class Migration(migrations.Migration):
    dependencies = [
        ("provisioning", "0002_search_hints"),
        ("fleet", "0001_initial"),
    ]

    operations = [migrations.RunSQL(definitions_sql("placement.sql"), DROP)]
