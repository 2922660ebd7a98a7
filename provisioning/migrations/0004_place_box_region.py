"""provisioning_place_box() also returns the chosen server's region (id, code, name), so that a claim
answers with the box as the box list shows it without a second read.

Now part of provisioning/sql/placement.sql, which migration 0003 loads; kept so that the migration
graph of existing databases stays the same.
"""

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [("provisioning", "0003_place_box_function")]

    operations: list[migrations.operations.base.Operation] = []
