"""The Event model moves to the fleet app (``fleet.core``): the box timeline is recorded by every app
and belongs to the core below them. State only here; fleet's 0003 takes the table over."""

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [("monitoring", "0002_event_ts_index")]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[migrations.DeleteModel(name="Event")],
            database_operations=[],
        ),
    ]
