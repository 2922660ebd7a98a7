"""Server-side SQL of provisioning, kept as versioned ``.sql`` files and loaded by migrations."""

from __future__ import annotations

from pathlib import Path


def sql_file(name: str) -> str:
    """The text of ``provisioning/sql/<name>``."""
    return (Path(__file__).parent / name).read_text(encoding="utf-8")
