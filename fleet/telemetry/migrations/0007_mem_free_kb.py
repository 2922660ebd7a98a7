# Free memory (kB) of a box, stored where a source reports it (a stock OverTheBox box's os_mem_free,
# docs/otb-protocol.md "Telemetry"): a nullable column on the raw box samples, its average and minimum
# in both rollups, and the live status.
#
# Safe on the partitioned tables: ADD COLUMN without a default (NULL) on the partitioned parent adds the
# column to every partition, DEFAULT included, as a catalog change only (no rewrite, no scan), and new
# partitions (telemetry_ensure_partition: PARTITION OF, or LIKE the parent then ATTACH) get it from the
# parent. It needs ACCESS EXCLUSIVE on the parent and each partition for that instant: lock_timeout makes
# the migration fail (run it again) rather than wait behind the telemetry writer's transactions while
# every writer queues behind it. Django's AddField of a nullable column is the same catalog-only change.

from django.db import migrations, models

FORWARD = """
SET LOCAL lock_timeout = '5s';
ALTER TABLE telemetry_box_sample ADD COLUMN mem_free_kb bigint;
ALTER TABLE telemetry_box_rollup_5m ADD COLUMN mem_free_avg double precision, ADD COLUMN mem_free_min bigint;
ALTER TABLE telemetry_box_rollup_1h ADD COLUMN mem_free_avg double precision, ADD COLUMN mem_free_min bigint;
"""
BACKWARD = """
SET LOCAL lock_timeout = '5s';
ALTER TABLE telemetry_box_sample DROP COLUMN mem_free_kb;
ALTER TABLE telemetry_box_rollup_5m DROP COLUMN mem_free_avg, DROP COLUMN mem_free_min;
ALTER TABLE telemetry_box_rollup_1h DROP COLUMN mem_free_avg, DROP COLUMN mem_free_min;
"""


class Migration(migrations.Migration):

    dependencies = [
        ('telemetry', '0006_stale_rollup'),
    ]

    operations = [
        migrations.RunSQL(FORWARD, BACKWARD),
        migrations.AddField(
            model_name='boxstatus',
            name='mem_free_kb',
            field=models.BigIntegerField(blank=True, null=True),
        ),
    ]
