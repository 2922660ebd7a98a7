"""Column specs: what a raw-SQL statement of the live paths writes into a table, said once.

A :class:`ColumnSpec` lists the columns a COPY or an INSERT sets, each with its PostgreSQL type; the
column lists, the binary COPY types, the ``unnest`` casts and the temp-table DDL are built from it,
never typed again. For a model's table the types come from the model's fields
(``field.db_type(connection)``), so a migration that changes a field changes the SQL with it; the
tables without a model (the partitioned telemetry samples and rollups) have their spec in
``fleet.telemetry.schema``. ``tests/fleet/telemetry/test_schema_contract.py`` checks every spec
against ``information_schema`` of the migrated database: the names, the types, and that an INSERT
sets every NOT NULL column that has no default.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.db import connection
from django.db.models import Model


@dataclass(frozen=True, slots=True)
class Column:
    """One column: its name and its PostgreSQL type as written in DDL (``varchar(32)``, ``bigint``)."""

    name: str
    type: str

    @property
    def base_type(self) -> str:
        """The type without its modifier: what binary COPY and array casts name (a cast to
        ``varchar(32)`` would silently truncate; the column itself still refuses a longer value)."""
        return self.type.split("(", 1)[0].strip()


@dataclass(frozen=True)
class ColumnSpec:
    """The columns a statement writes into ``table``, in the order of its values.

    ``inserts``: the statement creates rows (COPY, INSERT), so it must set every NOT NULL column
    without a default (the schema-contract test checks it); False for a spec that only feeds an
    UPDATE. ``extra``: columns of a temp table that are not columns of ``table`` (a flag the UPDATE
    reads, say).
    """

    table: str
    columns: tuple[Column, ...]
    inserts: bool = True
    extra: tuple[Column, ...] = ()

    @property
    def names(self) -> list[str]:
        return [column.name for column in self.columns]

    @property
    def column_list(self) -> str:
        """``a, b, c``: the columns of the table this spec writes."""
        return ", ".join(self.names)

    @property
    def copy_types(self) -> list[str]:
        """The types of every column for binary COPY (``copy.set_types``), extras included."""
        return [column.base_type for column in (*self.columns, *self.extra)]

    def copy_sql(self, table: str | None = None) -> str:
        """``COPY table (columns) FROM STDIN (FORMAT BINARY)``; ``table`` names a temp table fed
        with the same columns."""
        names = ", ".join(column.name for column in (*self.columns, *self.extra))
        return f"COPY {table or self.table} ({names}) FROM STDIN (FORMAT BINARY)"

    def unnest_sql(self) -> str:
        """``unnest(%s::t1[], %s::t2[], ...)``: the columns as array parameters, one row per index."""
        casts = ", ".join(f"%s::{column.base_type}[]" for column in (*self.columns, *self.extra))
        return f"unnest({casts})"

    def temp_table_sql(self, name: str) -> str:
        """DDL of a session temp table ``name`` with these columns (emptied at every commit)."""
        body = ", ".join(f"{column.name} {column.type}" for column in (*self.columns, *self.extra))
        return f"CREATE TEMP TABLE IF NOT EXISTS {name} ({body}) ON COMMIT DELETE ROWS"

    def on(self, table: str) -> ColumnSpec:
        """The same columns written into another table of the same shape (a rollup resolution)."""
        return ColumnSpec(table, self.columns, self.inserts, self.extra)

    @property
    def c(self) -> ColumnNames:
        """The column names as attributes (``spec.c.cpu_pct`` is ``"cpu_pct"``), for the SQL that reads
        the columns: a name the spec lacks fails at import, not in a statement at run time."""
        return ColumnNames(self)

    def index(self, name: str) -> int:
        """The position of column ``name`` in a row (KeyError naming it if the spec has none)."""
        for position, column in enumerate((*self.columns, *self.extra)):
            if column.name == name:
                return position
        raise KeyError(f"{self.table} spec has no column {name!r}")


class ColumnNames:
    """See :attr:`ColumnSpec.c`."""

    __slots__ = ("_names",)

    def __init__(self, spec: ColumnSpec) -> None:
        self._names = frozenset(column.name for column in (*spec.columns, *spec.extra))

    def __getattr__(self, name: str) -> str:
        if name not in self._names:
            raise AttributeError(f"no column {name!r} in this spec")
        return name


def spec_of(*columns: tuple[str, str]) -> tuple[Column, ...]:
    """Columns of a table without a model, from (name, type) pairs."""
    return tuple(Column(name, type_) for name, type_ in columns)


def model_columns(model: type[Model], *fields: str) -> tuple[Column, ...]:
    """The columns of ``model``'s ``fields`` (names or attnames: ``box`` and ``box_id`` both give
    the ``box_id`` column) with the types the model's migrations created."""
    by_column = {field.column: field for field in model._meta.concrete_fields}
    columns = []
    for name in fields:
        field: Any = by_column.get(name) or model._meta.get_field(name)
        columns.append(Column(field.column, field.db_type(connection)))
    return tuple(columns)


def model_spec(
    model: type[Model], *fields: str, inserts: bool = True, extra: tuple[Column, ...] = ()
) -> ColumnSpec:
    """The spec of a statement writing ``fields`` of ``model``'s table."""
    return ColumnSpec(model._meta.db_table, model_columns(model, *fields), inserts=inserts, extra=extra)
