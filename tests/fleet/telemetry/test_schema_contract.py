"""The schema contract of the live paths' raw SQL: every column spec (``fleet.core.column_specs``) and
every raw statement, held to the migrated test database.

A spec names the columns a COPY or an INSERT writes; here each is checked against
``information_schema.columns``: the columns exist with the spec's types, and an INSERT sets every
NOT NULL column that has no default (so a new field without ``db_default`` fails here, not at run
time in production). Every raw statement is then PREPAREd: PostgreSQL resolves each table, column
and type in it without running it.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from django.db import connection
from otb_protocol import AGENT_TO_SERVER

from fleet.commands.models import Command
from fleet.core.audit import AUDIT_INSERT, AUDIT_INSERT_SQL
from fleet.core.column_specs import Column, ColumnSpec, model_spec
from fleet.core.events import EVENT_INSERT, EVENTS_INSERT_SQL
from fleet.live import gate
from fleet.telemetry import schema, selectors, storage, writer
from provisioning import checkin
from tests.protocol.schema_walk import numeric_fields

pytestmark = pytest.mark.django_db

SPECS: list[ColumnSpec] = [
    schema.BOX_SAMPLE,
    schema.WAN_SAMPLE,
    *schema.ROLLUPS["5m"],
    *schema.ROLLUPS["1h"],
    schema.BOX_STATUS_CREATE,
    schema.BOX_STATUS_APPLY,
    schema.WAN_STATUS_UPSERT,
    schema.STALE_ROLLUP,
    gate.SESSION_CLAIM,
    gate.HELLO_STATUS,
    gate.HELLO_VERSIONS,
    EVENT_INSERT,
    AUDIT_INSERT,
]

STATEMENTS: dict[str, str] = {
    "writer.LOCK_SQL": writer.LOCK_SQL,
    "writer.CREATE_STATUS_SQL": writer.CREATE_STATUS_SQL,
    "writer.UPDATE_STATUS_SQL": writer.UPDATE_STATUS_SQL,
    "writer.TOUCH_SQL": writer.TOUCH_SQL,
    "writer.WAN_PREVIOUS_SQL": writer.WAN_PREVIOUS_SQL,
    "writer.UPSERT_WAN_SQL": writer.UPSERT_WAN_SQL,
    "gate.CONNECT_LOOKUP_SQL": gate.CONNECT_LOOKUP_SQL,
    "gate.CLAIM_SESSIONS_SQL": gate.CLAIM_SESSIONS_SQL,
    "gate.HELLO_LOCK_SQL": gate.HELLO_LOCK_SQL,
    "gate.HELLO_STATUS_SQL": gate.HELLO_STATUS_SQL,
    "gate.HELLO_VERSIONS_SQL": gate.HELLO_VERSIONS_SQL,
    "gate.CLOSE_LOCK_SQL": gate.CLOSE_LOCK_SQL,
    "gate.CLOSE_STATUS_SQL": gate.CLOSE_STATUS_SQL,
    "gate.WAITING_COMMANDS_SQL": gate.WAITING_COMMANDS_SQL,
    "checkin._QUERY": checkin._QUERY,
    "events.EVENTS_INSERT_SQL": EVENTS_INSERT_SQL,
    "audit.AUDIT_INSERT_SQL": AUDIT_INSERT_SQL,
    "storage.BOX_5M_SQL": storage.BOX_5M_SQL,
    "storage.WAN_5M_SQL": storage.WAN_5M_SQL,
    "storage.BOX_1H_SQL": storage.BOX_1H_SQL,
    "storage.WAN_1H_SQL": storage.WAN_1H_SQL,
    "storage.BOX_5M_STALE_SQL": storage.BOX_5M_STALE_SQL,
    "storage.WAN_5M_STALE_SQL": storage.WAN_5M_STALE_SQL,
    "storage.BOX_1H_STALE_SQL": storage.BOX_1H_STALE_SQL,
    "storage.WAN_1H_STALE_SQL": storage.WAN_1H_STALE_SQL,
    "storage.STALE_TAKE_SQL": storage.STALE_TAKE_SQL,
    "schema.STALE_ROLLUP_INSERT_SQL": schema.STALE_ROLLUP_INSERT_SQL,
    "selectors.BOX_RAW_SQL": selectors.BOX_RAW_SQL,
    "selectors.WAN_RAW_SQL": selectors.WAN_RAW_SQL,
    **{f"selectors.BOX_ROLLUP_SQL[{res}]": sql for res, sql in selectors.BOX_ROLLUP_SQL.items()},
    **{f"selectors.WAN_ROLLUP_SQL[{res}]": sql for res, sql in selectors.WAN_ROLLUP_SQL.items()},
}


def table_columns(table: str) -> dict[str, dict[str, Any]]:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT column_name, data_type, character_maximum_length, is_nullable, column_default,"
            " is_identity, is_generated FROM information_schema.columns"
            " WHERE table_schema = current_schema() AND table_name = %s",
            [table],
        )
        names = [column.name for column in cursor.description]
        return {row[0]: dict(zip(names, row, strict=True)) for row in cursor.fetchall()}


def canonical(column: Column) -> tuple[str, int | None]:
    """(the type's SQL-standard name, its length) as PostgreSQL reads the spec's type."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT %s::regtype::text", [column.base_type])
        name = cursor.fetchone()[0]
    length = re.search(r"\((\d+)\)", column.type)
    return name, int(length.group(1)) if length else None


@pytest.mark.parametrize("spec", SPECS, ids=lambda spec: f"{spec.table}:{','.join(spec.names)}"[:80])
def test_every_column_of_the_spec_exists_with_its_type(spec: ColumnSpec) -> None:
    columns = table_columns(spec.table)
    assert columns, f"{spec.table} does not exist"
    for column in spec.columns:
        assert column.name in columns, f"{spec.table}.{column.name} does not exist"
        actual = columns[column.name]
        assert canonical(column) == (actual["data_type"], actual["character_maximum_length"]), (
            f"{spec.table}.{column.name}: spec says {column.type}, the database has "
            f"{actual['data_type']}({actual['character_maximum_length']})"
        )
    for column in spec.extra:
        assert column.name not in columns, f"extra column {column.name} shadows {spec.table}.{column.name}"


@pytest.mark.parametrize(
    "spec",
    [spec for spec in SPECS if spec.inserts],
    ids=lambda spec: f"{spec.table}:{','.join(spec.names)}"[:80],
)
def test_an_insert_sets_every_not_null_column_without_a_default(spec: ColumnSpec) -> None:
    required = {
        name
        for name, column in table_columns(spec.table).items()
        if column["is_nullable"] == "NO"
        and column["column_default"] is None
        and column["is_identity"] == "NO"
        and column["is_generated"] == "NEVER"
    }
    assert required - set(spec.names) == set(), f"{spec.table}: the insert leaves NOT NULL columns unset"


def positional(sql: str) -> str:
    """``%s`` and ``%(name)s`` placeholders as ``$n`` (what PREPARE takes); ``%%`` as ``%``."""
    numbers: dict[str, int] = {}
    counter = 0

    def number(match: re.Match[str]) -> str:
        nonlocal counter
        if match.group(0) == "%%":
            return "%"
        name = match.group(1)
        if name is None:
            counter += 1
            return f"${counter}"
        if name not in numbers:
            numbers[name] = len(numbers) + 1
        return f"${numbers[name]}"

    return re.sub(r"%%|%\((\w+)\)s|%s", number, sql)


@pytest.mark.parametrize("name", list(STATEMENTS))
def test_every_raw_statement_is_accepted_by_the_schema(name: str) -> None:
    # the writer's temp tables exist on its connections; here, in this test's transaction
    with connection.cursor() as cursor:
        cursor.execute(writer.TEMP_TABLES_SQL)
        cursor.execute(f"PREPARE contract_check AS {positional(STATEMENTS[name])}")
        cursor.execute("DEALLOCATE contract_check")


def test_the_temp_tables_are_the_status_columns_they_feed() -> None:
    # the temp tables' DDL is built from the status specs: same names, same types
    with connection.cursor() as cursor:
        cursor.execute(writer.TEMP_TABLES_SQL)
    for temp, spec in (
        (schema.INCOMING_BOX_STATUS, schema.BOX_STATUS_APPLY),
        (schema.INCOMING_WAN_STATUS, schema.WAN_STATUS_UPSERT),
    ):
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT column_name, data_type, character_maximum_length FROM information_schema.columns"
                " WHERE table_name = %s AND table_schema LIKE 'pg_temp%%' ORDER BY ordinal_position",
                [temp],
            )
            rows = cursor.fetchall()
        expected = [(column.name, *canonical(column)) for column in (*spec.columns, *spec.extra)]
        assert rows == expected


def test_a_spec_column_the_database_lacks_is_caught() -> None:
    # the contract itself: a spec naming a column the table does not have fails the check
    wrong = ColumnSpec(schema.BOX_SAMPLE.table, (*schema.BOX_SAMPLE.columns, Column("cpu_temp", "real")))
    with pytest.raises(AssertionError, match="cpu_temp does not exist"):
        test_every_column_of_the_spec_exists_with_its_type(wrong)
    partial = ColumnSpec(schema.BOX_SAMPLE.table, schema.BOX_SAMPLE.columns[1:])
    with pytest.raises(AssertionError, match="NOT NULL columns unset"):
        test_an_insert_sets_every_not_null_column_without_a_default(partial)


# Where each number an agent sends is stored: (spec, column) for every place, None when it is not
# stored. A number added to an agent frame fails the first test below until it is placed here.
BOX_ROLLUP, WAN_ROLLUP = schema.ROLLUPS["5m"]
COMMAND_PROGRESS = model_spec(Command, "progress", inserts=False)
STORED_AS: dict[str, list[tuple[ColumnSpec, str]] | None] = {
    "hello.v": None,  # compared with the protocol version, never stored
    "hello.uptime_s": [(gate.HELLO_STATUS, "uptime_s")],
    "hello.dropped_samples": [(gate.HELLO_STATUS, "dropped_samples")],
    "telemetry.seq": [
        (schema.BOX_SAMPLE, "seq"),
        (schema.WAN_SAMPLE, "seq"),
        (schema.BOX_STATUS_APPLY, "last_seq"),
    ],
    "telemetry.dropped": [(schema.BOX_STATUS_APPLY, "dropped_samples")],
    "telemetry.samples[0].ts": [(schema.BOX_SAMPLE, "ts"), (schema.WAN_SAMPLE, "ts")],
    "telemetry.samples[0].cpu_pct": [
        (schema.BOX_SAMPLE, "cpu_pct"),
        (schema.BOX_STATUS_APPLY, "cpu_pct"),
        (BOX_ROLLUP, "cpu_max"),
    ],
    "telemetry.samples[0].mem_pct": [(schema.BOX_SAMPLE, "mem_pct"), (schema.BOX_STATUS_APPLY, "mem_pct")],
    "telemetry.samples[0].load1": [(schema.BOX_SAMPLE, "load1"), (schema.BOX_STATUS_APPLY, "load1")],
    "telemetry.samples[0].uptime_s": [(schema.BOX_SAMPLE, "uptime_s"), (schema.BOX_STATUS_APPLY, "uptime_s")],
    "telemetry.samples[0].conntrack": [(schema.BOX_SAMPLE, "conntrack")],
    "telemetry.samples[0].rx_bps": [
        (schema.BOX_SAMPLE, "rx_bps"),
        (schema.BOX_STATUS_APPLY, "rx_bps"),
        (BOX_ROLLUP, "rx_max"),
    ],
    "telemetry.samples[0].tx_bps": [
        (schema.BOX_SAMPLE, "tx_bps"),
        (schema.BOX_STATUS_APPLY, "tx_bps"),
        (BOX_ROLLUP, "tx_max"),
    ],
    "telemetry.samples[0].wans[0].rtt_ms": [
        (schema.WAN_SAMPLE, "rtt_ms"),
        (schema.WAN_STATUS_UPSERT, "rtt_ms"),
        (WAN_ROLLUP, "rtt_max"),
    ],
    "telemetry.samples[0].wans[0].jitter_ms": [
        (schema.WAN_SAMPLE, "jitter_ms"),
        (schema.WAN_STATUS_UPSERT, "jitter_ms"),
    ],
    "telemetry.samples[0].wans[0].loss_pct": [
        (schema.WAN_SAMPLE, "loss_pct"),
        (schema.WAN_STATUS_UPSERT, "loss_pct"),
    ],
    "telemetry.samples[0].wans[0].rx_bps": [
        (schema.WAN_SAMPLE, "rx_bps"),
        (schema.WAN_STATUS_UPSERT, "rx_bps"),
        (WAN_ROLLUP, "rx_max"),
    ],
    "telemetry.samples[0].wans[0].tx_bps": [
        (schema.WAN_SAMPLE, "tx_bps"),
        (schema.WAN_STATUS_UPSERT, "tx_bps"),
        (WAN_ROLLUP, "tx_max"),
    ],
    "telemetry.samples[0].wans[0].subflows": [
        (schema.WAN_SAMPLE, "subflows"),
        (schema.WAN_STATUS_UPSERT, "subflows"),
    ],
    "heartbeat.ts": None,  # the server answers with its own time
    "command_progress.progress": [(COMMAND_PROGRESS, "progress")],
    "error.retry_after_s": None,  # logged only
}
# What each column type holds (timestamps: in unix seconds, what Python's datetime holds).
HOLDS = {
    "smallint": (-(2**15), 2**15 - 1),
    "integer": (-(2**31), 2**31 - 1),
    "bigint": (-(2**63), 2**63 - 1),
    "real": (-3.4028234663852886e38, 3.4028234663852886e38),
    "double precision": (-1.7976931348623157e308, 1.7976931348623157e308),
    "timestamp with time zone": (-62135596800, 253402300799),
}
AGENT_NUMBERS = {f"{field.message}.{field.path}": field for field in numeric_fields(AGENT_TO_SERVER)}
STORED = [
    (name, spec, column)
    for name, places in STORED_AS.items()
    if places and name in AGENT_NUMBERS
    for spec, column in places
]


def test_every_number_an_agent_sends_has_its_storage_listed() -> None:
    assert set(STORED_AS) == set(AGENT_NUMBERS)


@pytest.mark.parametrize(
    ("name", "spec", "column"),
    STORED,
    ids=[f"{name}->{spec.table}.{column}" for name, spec, column in STORED],
)
def test_every_column_holds_every_value_the_protocol_accepts(
    name: str, spec: ColumnSpec, column: str
) -> None:
    # given the bounds the protocol schema puts on the number and the column it is stored in
    node = AGENT_NUMBERS[name].node
    [spec_column] = [candidate for candidate in spec.columns if candidate.name == column]
    type_name, _ = canonical(spec_column)
    assert type_name in table_columns(spec.table)[column]["data_type"], (spec.table, column)
    # then the column's type holds both bounds (so nothing acked is stored as Infinity or refused)
    low, high = HOLDS[type_name]
    assert low <= node["minimum"] and node["maximum"] <= high, (name, type_name, node)
