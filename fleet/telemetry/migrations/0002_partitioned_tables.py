"""The raw sample and rollup tables: natively partitioned by time, written with COPY and
INSERT ... SELECT, dropped a whole partition at a time by retention.

``telemetry_ensure_partition`` creates one partition; when the DEFAULT partition already holds rows
of its range (samples that arrived before their partition existed) it moves them into the new table
before attaching it, so no acknowledged sample is ever lost. ``telemetry_ensure_partitions`` creates
every partition needed from yesterday to ``days_ahead`` days ahead.
"""

from django.db import migrations

TABLES_SQL = """
CREATE TABLE telemetry_box_sample (
    box_id uuid NOT NULL,
    seq bigint NOT NULL,
    idx smallint NOT NULL,
    ts timestamptz NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now(),
    cpu_pct real,
    mem_pct real,
    load1 real,
    uptime_s bigint,
    tunnel_up boolean,
    conntrack bigint,
    rx_bps bigint,
    tx_bps bigint,
    wans_up smallint,
    wans_total smallint
) PARTITION BY RANGE (ts);
CREATE INDEX telemetry_box_sample_box_ts ON telemetry_box_sample (box_id, ts);
CREATE TABLE telemetry_box_sample_default PARTITION OF telemetry_box_sample DEFAULT;

CREATE TABLE telemetry_wan_sample (
    box_id uuid NOT NULL,
    seq bigint NOT NULL,
    ts timestamptz NOT NULL,
    iface varchar(32) NOT NULL,
    kind varchar(16) NOT NULL,
    up boolean NOT NULL,
    rtt_ms real,
    jitter_ms real,
    loss_pct real,
    rx_bps bigint NOT NULL,
    tx_bps bigint NOT NULL,
    subflows integer NOT NULL
) PARTITION BY RANGE (ts);
CREATE INDEX telemetry_wan_sample_box_ts ON telemetry_wan_sample (box_id, ts);
CREATE TABLE telemetry_wan_sample_default PARTITION OF telemetry_wan_sample DEFAULT;
"""

ROLLUP_TEMPLATE = """
CREATE TABLE telemetry_box_rollup_{res} (
    box_id uuid NOT NULL,
    bucket timestamptz NOT NULL,
    samples integer NOT NULL,
    cpu_avg double precision,
    cpu_max real,
    mem_avg double precision,
    load_avg double precision,
    rx_avg double precision,
    rx_max bigint,
    tx_avg double precision,
    tx_max bigint,
    tunnel_up_samples integer NOT NULL,
    PRIMARY KEY (box_id, bucket)
) PARTITION BY RANGE (bucket);
CREATE TABLE telemetry_box_rollup_{res}_default PARTITION OF telemetry_box_rollup_{res} DEFAULT;

CREATE TABLE telemetry_wan_rollup_{res} (
    box_id uuid NOT NULL,
    iface varchar(32) NOT NULL,
    bucket timestamptz NOT NULL,
    samples integer NOT NULL,
    up_samples integer NOT NULL,
    rtt_count integer NOT NULL,
    rtt_avg double precision,
    rtt_max real,
    jitter_avg double precision,
    loss_count integer NOT NULL,
    loss_avg double precision,
    rx_avg double precision,
    rx_max bigint,
    tx_avg double precision,
    tx_max bigint,
    PRIMARY KEY (box_id, iface, bucket)
) PARTITION BY RANGE (bucket);
CREATE TABLE telemetry_wan_rollup_{res}_default PARTITION OF telemetry_wan_rollup_{res} DEFAULT;
"""

FUNCTIONS_SQL = r"""
CREATE OR REPLACE FUNCTION telemetry_ensure_partition(
    parent text, part text, key text, lower_ts timestamptz, upper_ts timestamptz
) RETURNS boolean LANGUAGE plpgsql AS $fn$
DECLARE
    pending boolean;
BEGIN
    -- Serialise concurrent creators of the same partition (writer start, beat task, migration).
    PERFORM pg_advisory_xact_lock(hashtext('telemetry_partition:' || part));
    IF to_regclass(part) IS NOT NULL THEN
        RETURN false;
    END IF;
    EXECUTE format('SELECT EXISTS (SELECT 1 FROM %I WHERE %I >= $1 AND %I < $2)', parent || '_default', key, key)
        INTO pending USING lower_ts, upper_ts;
    IF NOT pending THEN
        EXECUTE format('CREATE TABLE %I PARTITION OF %I FOR VALUES FROM (%L) TO (%L)',
                       part, parent, lower_ts, upper_ts);
    ELSE
        -- Rows of this range already sit in DEFAULT: move them, then attach.
        EXECUTE format('CREATE TABLE %I (LIKE %I INCLUDING DEFAULTS INCLUDING CONSTRAINTS)', part, parent);
        EXECUTE format('WITH moved AS (DELETE FROM %I WHERE %I >= %L AND %I < %L RETURNING *) '
                       'INSERT INTO %I SELECT * FROM moved',
                       parent || '_default', key, lower_ts, key, upper_ts, part);
        EXECUTE format('ALTER TABLE %I ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)',
                       parent, part, lower_ts, upper_ts);
    END IF;
    RETURN true;
END
$fn$;

CREATE OR REPLACE FUNCTION telemetry_ensure_partitions(days_ahead integer, at_ts timestamptz DEFAULT now())
RETURNS integer LANGUAGE plpgsql AS $fn$
DECLARE
    today timestamptz := date_trunc('day', at_ts AT TIME ZONE 'UTC') AT TIME ZONE 'UTC';
    this_month timestamptz := date_trunc('month', at_ts AT TIME ZONE 'UTC') AT TIME ZONE 'UTC';
    day_start timestamptz;
    month_start timestamptz;
    parent text;
    created integer := 0;
BEGIN
    FOR d IN -1..days_ahead LOOP
        day_start := today + make_interval(days => d);
        FOREACH parent IN ARRAY ARRAY['telemetry_box_sample', 'telemetry_wan_sample'] LOOP
            IF telemetry_ensure_partition(parent, parent || '_p' || to_char(day_start AT TIME ZONE 'UTC', 'YYYYMMDD'),
                                          'ts', day_start, day_start + interval '1 day') THEN
                created := created + 1;
            END IF;
        END LOOP;
        FOREACH parent IN ARRAY ARRAY['telemetry_box_rollup_5m', 'telemetry_wan_rollup_5m'] LOOP
            IF telemetry_ensure_partition(parent, parent || '_p' || to_char(day_start AT TIME ZONE 'UTC', 'YYYYMMDD'),
                                          'bucket', day_start, day_start + interval '1 day') THEN
                created := created + 1;
            END IF;
        END LOOP;
    END LOOP;
    FOR m IN 0..(1 + days_ahead / 28) LOOP
        month_start := this_month + make_interval(months => m);
        FOREACH parent IN ARRAY ARRAY['telemetry_box_rollup_1h', 'telemetry_wan_rollup_1h'] LOOP
            IF telemetry_ensure_partition(parent, parent || '_p' || to_char(month_start AT TIME ZONE 'UTC', 'YYYYMM'),
                                          'bucket', month_start, month_start + interval '1 month') THEN
                created := created + 1;
            END IF;
        END LOOP;
    END LOOP;
    RETURN created;
END
$fn$;
"""

DROP_SQL = """
DROP FUNCTION IF EXISTS telemetry_ensure_partitions(integer, timestamptz);
DROP FUNCTION IF EXISTS telemetry_ensure_partition(text, text, text, timestamptz, timestamptz);
DROP TABLE IF EXISTS telemetry_box_sample, telemetry_wan_sample, telemetry_box_rollup_5m,
    telemetry_wan_rollup_5m, telemetry_box_rollup_1h, telemetry_wan_rollup_1h CASCADE;
"""


class Migration(migrations.Migration):
    dependencies = [("telemetry", "0001_initial")]

    operations = [
        migrations.RunSQL(
            TABLES_SQL
            + ROLLUP_TEMPLATE.format(res="5m")
            + ROLLUP_TEMPLATE.format(res="1h")
            + FUNCTIONS_SQL
            + "SELECT telemetry_ensure_partitions(2);",
            DROP_SQL,
        ),
    ]
