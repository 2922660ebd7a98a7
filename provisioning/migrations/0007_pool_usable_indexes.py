"""The placement functions as provisioning/sql/placement.sql defines them now: a public IPv4 pool wider
than /31 never hands out its network or broadcast address (``provisioning_pool_first_index`` and
``provisioning_pool_usable``, also read by the capacity figures)."""

from django.db import migrations

from provisioning.sql import definitions_sql


class Migration(migrations.Migration):
    dependencies = [("provisioning", "0006_placement_functions")]

    operations = [migrations.RunSQL(definitions_sql("placement.sql"), migrations.RunSQL.noop)]
