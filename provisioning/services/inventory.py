"""The inventory: factory data of boxes (``serial,model,mac,factory_secret,claim_code``) imported in
batches, idempotently, before any box is enrolled or claimed."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from django.db import transaction

from fleet.core.access import authorize_staff
from fleet.core.audit import Actor, audit_record
from fleet.core.choices import BoxState
from fleet.core.errors import InvalidInput
from fleet.core.models import Box
from fleet.core.tokens import box_secret_digest, box_secret_matches
from fleet.core.validators import mac_normalise, secret_clean, serial_clean, short_text_clean

IMPORT_BATCH_SIZE = 1000
IMPORT_FIELDS = ("serial", "model", "mac", "factory_secret", "claim_code")


@dataclass(frozen=True)
class ImportRowError:
    line: int
    serial: str
    field: str
    reason: str
    kind: str = "invalid"  # invalid | conflict | decommissioned


@dataclass
class ImportReport:
    """What an import did: counts and, per rejected row, its line, field and reason."""

    created: int = 0
    unchanged: int = 0
    rejected: int = 0
    errors: list[ImportRowError] = field(default_factory=list)

    @property
    def total(self) -> int:
        return self.created + self.unchanged + self.rejected

    def reject(self, error: ImportRowError) -> None:
        self.rejected += 1
        self.errors.append(error)

    def as_dict(self) -> dict[str, Any]:
        return {
            "created": self.created,
            "unchanged": self.unchanged,
            "rejected": self.rejected,
            "errors": [error.__dict__ for error in self.errors],
        }


@dataclass(frozen=True)
class _ImportRow:
    line: int
    serial: str
    model: str
    mac: str
    factory_secret: str
    claim_code: str


def _import_row_clean(line: int, row: dict[str, Any]) -> _ImportRow:
    if not isinstance(row, dict):
        raise InvalidInput("not a row of named columns", field="row")
    unknown = sorted(str(key) for key in row if key not in IMPORT_FIELDS and key is not None)
    if unknown:
        raise InvalidInput(f"unknown column(s): {', '.join(unknown)}", field=unknown[0])
    if None in row:  # csv.DictReader puts extra cells under the key None
        raise InvalidInput("more cells than columns", field="row")
    serial = serial_clean(row.get("serial") or "")
    model = short_text_clean(row.get("model") or "", field="model")
    mac_raw = (row.get("mac") or "").strip()
    mac = mac_normalise(mac_raw) if mac_raw else ""
    factory_secret = secret_clean(row.get("factory_secret") or "", field="factory_secret")
    claim_code = secret_clean(row.get("claim_code") or "", field="claim_code")
    return _ImportRow(line, serial, model, mac, factory_secret, claim_code)


def _import_compare(row: _ImportRow, box: Box) -> ImportRowError | None:
    """None when the stored box holds exactly this row's data, else why the row is refused."""
    if box.state == BoxState.DECOMMISSIONED:
        return ImportRowError(row.line, row.serial, "serial", "box is decommissioned", "decommissioned")
    if not box_secret_matches(row.serial, row.factory_secret, box.factory_secret_hash):
        return ImportRowError(
            row.line, row.serial, "factory_secret", "box exists with a different factory secret", "conflict"
        )
    if not box_secret_matches(row.serial, row.claim_code, box.claim_code_hash):
        return ImportRowError(
            row.line, row.serial, "claim_code", "box exists with a different claim code", "conflict"
        )
    for name in ("model", "mac"):
        if getattr(row, name) != getattr(box, name):
            return ImportRowError(
                row.line, row.serial, name, f"box exists with a different {name}", "conflict"
            )
    return None


def _import_batch(actor: Actor, batch: list[_ImportRow], report: ImportReport) -> None:
    with transaction.atomic():
        existing = {box.serial: box for box in Box.objects.filter(serial__in=[row.serial for row in batch])}
        new_boxes: list[Box] = []
        for row in batch:
            box = existing.get(row.serial)
            if box is None:
                new_boxes.append(
                    Box(
                        serial=row.serial,
                        model=row.model,
                        mac=row.mac,
                        factory_secret_hash=box_secret_digest(row.serial, row.factory_secret),
                        claim_code_hash=box_secret_digest(row.serial, row.claim_code),
                        state=BoxState.UNCLAIMED,
                    )
                )
                continue
            error = _import_compare(row, box)
            if error is None:
                report.unchanged += 1
            else:
                report.reject(error)
        if new_boxes:
            # A concurrent import may write the same serial first: ignore_conflicts skips it, and
            # the rows not written (their client-side uuid is absent) are compared like existing ones.
            Box.objects.bulk_create(new_boxes, batch_size=IMPORT_BATCH_SIZE, ignore_conflicts=True)
            written = set(
                Box.objects.filter(pk__in=[box.pk for box in new_boxes]).values_list("serial", flat=True)
            )
            report.created += len(written)
            lost = [row for row in batch if row.serial not in written and row.serial not in existing]
            for row in lost:
                error = _import_compare(row, Box.objects.get(serial=row.serial))
                if error is None:
                    report.unchanged += 1
                else:
                    report.reject(error)
            audit_record(
                actor=actor,
                action="box.import",
                after={"created": len(written), "serials": sorted(written)[:50]},
            )


def boxes_import(
    *,
    actor: Actor,
    rows: Iterable[dict[str, Any]],
    progress: Callable[[ImportReport], None] | None = None,
) -> ImportReport:
    """Import factory data (``serial,model,mac,factory_secret,claim_code``) into the inventory.

    Idempotent: a serial already stored with identical data counts as unchanged; one with other
    secrets or hardware data is rejected as a conflict (a factory secret is never overwritten), and
    so is a decommissioned box. New boxes are bulk-written in batches of 1000, each batch in its
    own transaction; ``progress`` is called after every batch. Row numbers in the report are file
    line numbers (the header is line 1). Staff only (or the system: the ``import_boxes`` command).
    """
    authorize_staff(actor)
    report = ImportReport()
    batch: list[_ImportRow] = []
    seen: dict[str, _ImportRow] = {}
    for line, raw in enumerate(rows, start=2):
        try:
            row = _import_row_clean(line, raw)
        except InvalidInput as exc:
            serial = str(raw.get("serial") or "")[:64] if isinstance(raw, dict) else ""
            report.reject(ImportRowError(line, serial, exc.field or "row", exc.message))
            continue
        first = seen.get(row.serial)
        if first is not None:
            same = (first.model, first.mac, first.factory_secret, first.claim_code) == (
                row.model,
                row.mac,
                row.factory_secret,
                row.claim_code,
            )
            if same:
                report.unchanged += 1
            else:
                report.reject(
                    ImportRowError(
                        line,
                        row.serial,
                        "serial",
                        f"serial repeated with other data (line {first.line})",
                        "conflict",
                    )
                )
            continue
        seen[row.serial] = row
        batch.append(row)
        if len(batch) >= IMPORT_BATCH_SIZE:
            _import_batch(actor, batch, report)
            batch = []
            if progress is not None:
                progress(report)
    if batch:
        _import_batch(actor, batch, report)
    if progress is not None:
        progress(report)
    return report
