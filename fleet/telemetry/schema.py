"""The telemetry tables as the raw SQL of this app writes and reads them: one spec per statement
(see ``fleet.core.column_specs``), read by the writer's COPY and temp tables, the rollups and the
series queries; nothing else lists these columns.

The raw sample and rollup tables are partitioned tables created by migration ``0002`` (they have no
Django model), so their columns are spelled here, once, and
``tests/fleet/telemetry/test_schema_contract.py`` holds them to the migrated database. The status
tables' specs are derived from ``BoxStatus`` / ``WanStatus``.
"""

from __future__ import annotations

from fleet.core.column_specs import ColumnSpec, model_spec, spec_of
from fleet.telemetry.models import BoxStatus, StaleRollup, WanStatus

TIMESTAMPTZ = "timestamp with time zone"

# One row per sample; ``idx`` is the sample's index in its message. (``received_at`` defaults to now().)
BOX_SAMPLE = ColumnSpec(
    "telemetry_box_sample",
    spec_of(
        ("box_id", "uuid"),
        ("seq", "bigint"),
        ("idx", "smallint"),
        ("ts", TIMESTAMPTZ),
        ("cpu_pct", "real"),
        ("mem_pct", "real"),
        ("load1", "real"),
        ("uptime_s", "bigint"),
        ("tunnel_up", "boolean"),
        ("conntrack", "bigint"),
        ("rx_bps", "bigint"),
        ("tx_bps", "bigint"),
        ("wans_up", "smallint"),
        ("wans_total", "smallint"),
        # Added by migration 0007 (null where the source does not report it: otb-agent boxes).
        ("mem_free_kb", "bigint"),
    ),
)
# One row per WAN per sample.
WAN_SAMPLE = ColumnSpec(
    "telemetry_wan_sample",
    spec_of(
        ("box_id", "uuid"),
        ("seq", "bigint"),
        ("ts", TIMESTAMPTZ),
        ("iface", "varchar(32)"),
        ("kind", "varchar(16)"),
        ("up", "boolean"),
        ("rtt_ms", "real"),
        ("jitter_ms", "real"),
        ("loss_pct", "real"),
        ("rx_bps", "bigint"),
        ("tx_bps", "bigint"),
        ("subflows", "integer"),
    ),
)

# The rollups: the same columns at 5-minute and hourly resolution (primary key: box[, iface], bucket).
BOX_ROLLUP_KEY = ("box_id", "bucket")
BOX_ROLLUP = ColumnSpec(
    "telemetry_box_rollup_5m",
    spec_of(
        ("box_id", "uuid"),
        ("bucket", TIMESTAMPTZ),
        ("samples", "integer"),
        ("cpu_avg", "double precision"),
        ("cpu_max", "real"),
        ("mem_avg", "double precision"),
        ("load_avg", "double precision"),
        ("rx_avg", "double precision"),
        ("rx_max", "bigint"),
        ("tx_avg", "double precision"),
        ("tx_max", "bigint"),
        ("tunnel_up_samples", "integer"),
        ("mem_free_avg", "double precision"),
        ("mem_free_min", "bigint"),
    ),
)
WAN_ROLLUP_KEY = ("box_id", "iface", "bucket")
WAN_ROLLUP = ColumnSpec(
    "telemetry_wan_rollup_5m",
    spec_of(
        ("box_id", "uuid"),
        ("iface", "varchar(32)"),
        ("bucket", TIMESTAMPTZ),
        ("samples", "integer"),
        ("up_samples", "integer"),
        ("rtt_count", "integer"),
        ("rtt_avg", "double precision"),
        ("rtt_max", "real"),
        ("jitter_avg", "double precision"),
        ("loss_count", "integer"),
        ("loss_avg", "double precision"),
        ("rx_avg", "double precision"),
        ("rx_max", "bigint"),
        ("tx_avg", "double precision"),
        ("tx_max", "bigint"),
    ),
)
ROLLUPS = {
    resolution: (
        BOX_ROLLUP.on(f"telemetry_box_rollup_{resolution}"),
        WAN_ROLLUP.on(f"telemetry_wan_rollup_{resolution}"),
    )
    for resolution in ("5m", "1h")
}

# A status row for a box that has none: every other column has its database default.
BOX_STATUS_CREATE = model_spec(BoxStatus, "box")
# What a telemetry batch moves in a box's status row, COPYed into the temp table
# ``incoming_box_status`` and applied with one UPDATE; ``revive`` marks a box whose current session
# sends telemetry while it is marked offline.
INCOMING_BOX_STATUS = "incoming_box_status"
BOX_STATUS_APPLY = model_spec(
    BoxStatus,
    "box",
    "last_seq",
    "cpu_pct",
    "mem_pct",
    "mem_free_kb",
    "load1",
    "uptime_s",
    "tunnel_up",
    "rx_bps",
    "tx_bps",
    "wans_up",
    "wans_total",
    "dropped_samples",
    inserts=False,
    extra=spec_of(("revive", "boolean")),
)
# A WAN link's row, COPYed into ``incoming_wan_status`` and upserted on (box, iface).
INCOMING_WAN_STATUS = "incoming_wan_status"
WAN_STATUS_KEY = ("box_id", "iface")
WAN_STATUS_UPSERT = model_spec(
    WanStatus,
    "box",
    "iface",
    "label",
    "kind",
    "up",
    "rtt_ms",
    "jitter_ms",
    "loss_pct",
    "rx_bps",
    "tx_bps",
    "public_ip",
    "subflows",
    "up_changed_at",
    "degraded_since",
    "updated_at",
)


# The marks of hours whose rollups miss late samples (one per box and hour), inserted by the writer.
STALE_ROLLUP = model_spec(StaleRollup, "box", "hour")
STALE_ROLLUP_INSERT_SQL = (
    f"INSERT INTO {STALE_ROLLUP.table} ({STALE_ROLLUP.column_list}) SELECT * FROM {STALE_ROLLUP.unnest_sql()}"  # noqa: S608
    " ON CONFLICT (box_id, hour) DO NOTHING"
)


def upsert_sql(spec: ColumnSpec, *, source: str, key: tuple[str, ...]) -> str:
    """``INSERT INTO spec.table (columns) SELECT columns FROM source ON CONFLICT (key) DO UPDATE``
    setting every other column: the statement that applies a temp table of rows."""
    updates = ", ".join(f"{name} = EXCLUDED.{name}" for name in spec.names if name not in key)
    return (
        f"INSERT INTO {spec.table} ({spec.column_list}) SELECT {spec.column_list} FROM {source}"  # noqa: S608
        f" ON CONFLICT ({', '.join(key)}) DO UPDATE SET {updates}"
    )
