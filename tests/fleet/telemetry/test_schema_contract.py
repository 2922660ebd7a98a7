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

from fleet.core.audit import AUDIT_INSERT, AUDIT_INSERT_SQL
from fleet.core.column_specs import Column, ColumnSpec
from fleet.core.events import EVENT_INSERT, EVENTS_INSERT_SQL
from fleet.live import gate
from fleet.telemetry import schema, selectors, storage, writer
from provisioning import checkin

pytestmark = pytest.mark.django_db

SPECS: list[ColumnSpec] = [
    schema.BOX_SAMPLE,
    schema.WAN_SAMPLE,
    *schema.ROLLUPS["5m"],
    *schema.ROLLUPS["1h"],
    schema.BOX_STATUS_CREATE,
    schema.BOX_STATUS_APPLY,
    schema.WAN_STATUS_UPSERT,
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
