"""The box inventory import (provisioning.services.inventory): rows normalised, idempotent, a factory
secret never overwritten, every bad row reported with its line and field, written in batches."""

from __future__ import annotations

from typing import Any

import pytest

from fleet.core.audit import Actor
from fleet.core.choices import BoxState
from fleet.core.models import Box
from provisioning.services.inventory import boxes_import

pytestmark = pytest.mark.django_db


def import_row(serial: str, **overrides: str) -> dict[str, str]:
    row = {
        "serial": serial,
        "model": "OTB-v2c",
        "mac": "AA-BB-CC-00-11-22",
        "factory_secret": "secret-" + serial,
        "claim_code": "claim-" + serial,
    }
    row.update(overrides)
    return row


def test_import_creates_normalises_and_is_idempotent(system_actor: Actor) -> None:
    # given two good rows
    rows = [import_row("IMP-1"), import_row("IMP-2", mac="aabb.cc00.1133")]
    # when imported twice
    first = boxes_import(actor=system_actor, rows=rows)
    second = boxes_import(actor=system_actor, rows=rows)
    # then the first creates, the second changes nothing
    assert (first.created, first.unchanged, first.rejected) == (2, 0, 0)
    assert (second.created, second.unchanged, second.rejected) == (0, 2, 0)
    assert Box.objects.get(serial="IMP-1").mac == "aa:bb:cc:00:11:22"
    assert Box.objects.get(serial="IMP-2").mac == "aa:bb:cc:00:11:33"
    assert Box.objects.get(serial="IMP-1").state == BoxState.UNCLAIMED


def test_import_never_overwrites_a_factory_secret(system_actor: Actor) -> None:
    boxes_import(actor=system_actor, rows=[import_row("IMP-1")])
    stored = Box.objects.get(serial="IMP-1").factory_secret_hash
    report = boxes_import(actor=system_actor, rows=[import_row("IMP-1", factory_secret="another-secret")])
    assert report.rejected == 1
    error = report.errors[0]
    assert (error.line, error.field, error.kind) == (2, "factory_secret", "conflict")
    assert Box.objects.get(serial="IMP-1").factory_secret_hash == stored


def test_import_reports_every_bad_row_with_its_line_and_field(system_actor: Actor, box_factory: Any) -> None:
    box_factory("GONE-1", state=BoxState.DECOMMISSIONED)
    rows = [
        import_row("OK-1"),
        import_row("bad serial!"),
        import_row("OK-2", mac="zz:zz"),
        import_row("OK-3", factory_secret="short"),
        import_row("OK-1", claim_code="different-claim"),
        import_row("GONE-1"),
        import_row("É" * 3),
        import_row("X" * 65),
    ]
    report = boxes_import(actor=system_actor, rows=rows)
    assert report.created == 1
    assert report.rejected == 7
    assert sorted((error.line, error.field) for error in report.errors) == [
        (3, "serial"),
        (4, "mac"),
        (5, "factory_secret"),
        (6, "serial"),
        (7, "serial"),
        (8, "serial"),
        (9, "serial"),
    ]
    decommissioned = next(error for error in report.errors if error.line == 7)
    assert decommissioned.kind == "decommissioned"


def test_import_writes_in_batches_and_reports_progress(system_actor: Actor) -> None:
    rows = [import_row(f"BULK-{index:05d}") for index in range(2500)]
    calls: list[int] = []
    report = boxes_import(actor=system_actor, rows=rows, progress=lambda r: calls.append(r.total))
    assert report.created == 2500
    assert calls == [1000, 2000, 2500]
    assert Box.objects.filter(serial__startswith="BULK-").count() == 2500
