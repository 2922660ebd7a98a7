"""Server-side SQL of provisioning, kept as versioned ``.sql`` files and loaded by migrations."""

from __future__ import annotations

from pathlib import Path


def sql_file(name: str) -> str:
    """The text of ``provisioning/sql/<name>``."""
    return (Path(__file__).parent / name).read_text(encoding="utf-8")


def definitions_sql(name: str) -> str:
    """``provisioning/sql/<name>`` as a migration loads it: with function bodies not checked at
    creation (``check_function_bodies``, as pg_restore does), for this migration's transaction only.

    The file holds the one current definition, and every migration that loads it loads today's text: an
    early migration would otherwise fail on a fresh database as soon as the file names a table or a
    column that a later migration creates (``LANGUAGE sql`` bodies are checked when created). Each
    change of the file comes with a new migration that loads it again after the schema it needs."""
    return "SET LOCAL check_function_bodies = off;\n" + sql_file(name)
