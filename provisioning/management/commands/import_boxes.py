"""``manage.py import_boxes FILE``: load factory data (CSV ``serial,model,mac,factory_secret,claim_code``).

Prints progress after every batch and one line per rejected row. Exit status 0 when every row was
imported or already present unchanged, 1 when some rows were rejected, 2 when the file is unusable.
Running it again on the same file changes nothing.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from fleet.core.audit import Actor
from provisioning.services.inventory import IMPORT_FIELDS, ImportReport, boxes_import


class Command(BaseCommand):
    help = "Import boxes from a factory CSV (serial,model,mac,factory_secret,claim_code)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("file", help="CSV file, or - for standard input")

    def handle(self, *args: Any, **options: Any) -> None:
        path = options["file"]
        try:
            handle = sys.stdin if path == "-" else Path(path).open(newline="", encoding="utf-8-sig")  # noqa: SIM115
        except OSError as exc:
            raise CommandError(f"cannot read {path}: {exc}", returncode=2) from exc
        with handle:
            reader = csv.DictReader(handle)
            header = [name.strip() for name in reader.fieldnames or []]
            missing = [name for name in ("serial", "factory_secret", "claim_code") if name not in header]
            unknown = [name for name in header if name not in IMPORT_FIELDS]
            if missing or unknown:
                raise CommandError(
                    f"bad header {header}: expected {','.join(IMPORT_FIELDS)}"
                    + (f"; missing {', '.join(missing)}" if missing else "")
                    + (f"; unknown {', '.join(unknown)}" if unknown else ""),
                    returncode=2,
                )
            reader.fieldnames = header

            def progress(report: ImportReport) -> None:
                self.stdout.write(
                    f"progress: {report.total} rows: {report.created} created, "
                    f"{report.unchanged} unchanged, {report.rejected} rejected"
                )

            try:
                report = boxes_import(actor=Actor.system("cli:import_boxes"), rows=reader, progress=progress)
            except (csv.Error, UnicodeDecodeError) as exc:
                raise CommandError(f"{path}: not a readable CSV file: {exc}", returncode=2) from exc
        for error in report.errors:
            self.stdout.write(f"line {error.line}: {error.serial or '-'}: {error.field}: {error.reason}")
        summary = f"done: {report.created} created, {report.unchanged} unchanged, {report.rejected} rejected"
        if report.rejected:
            self.stdout.write(self.style.WARNING(summary))
            sys.exit(1)
        self.stdout.write(self.style.SUCCESS(summary))
