"""The import_boxes management command: every rejected row reported with its line, idempotent, its
exit status, a bad header refused."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from fleet.core.models import Box
from tests.conftest import management_command_run as run

pytestmark = pytest.mark.django_db

CSV = """serial,model,mac,factory_secret,claim_code
CSV-0001,OTB-v2c,AA:BB:CC:00:00:01,factory-0001,claim-code-0001
CSV-0002,OTB-v2c,aa-bb-cc-00-00-02,factory-0002,claim-code-0002
CSV-0001,OTB-v2c,AA:BB:CC:00:00:01,factory-0001,claim-code-0001
CSV-0003,OTB-v2c,not-a-mac,factory-0003,claim-code-0003
CSV 0004,OTB-v2c,AA:BB:CC:00:00:04,factory-0004,claim-code-0004
CSV-0005,OTB-v2c,AA:BB:CC:00:00:05,short,claim-code-0005
CSV-0002,OTB-v2c,aa-bb-cc-00-00-02,another-factory,claim-code-0002
CSV-0006,OTB-v2c
"""


def test_import_boxes_reports_rejected_rows_and_is_idempotent(tmp_path: Path) -> None:
    # given a CSV with good, duplicate and malformed rows
    path = tmp_path / "boxes.csv"
    path.write_text(CSV)
    # when it is imported
    status, output = run("import_boxes", str(path))
    # then the good rows are in, every bad row is reported with its line, and the status is 1
    assert status == 1
    assert set(Box.objects.values_list("serial", flat=True)) == {"CSV-0001", "CSV-0002"}
    assert Box.objects.get(serial="CSV-0002").mac == "aa:bb:cc:00:00:02"
    for line, field in (
        (5, "mac"),
        (6, "serial"),
        (7, "factory_secret"),
        (8, "serial"),
        (9, "factory_secret"),
    ):
        assert f"line {line}: " in output and field in output.split(f"line {line}: ")[1].splitlines()[0]
    assert "progress:" in output
    assert "done: 2 created, 1 unchanged, 5 rejected" in output
    # and a second run changes nothing
    status, output = run("import_boxes", str(path))
    assert status == 1
    assert "done: 0 created, 3 unchanged, 5 rejected" in output
    assert Box.objects.count() == 2


def test_import_boxes_exits_0_when_everything_is_in(tmp_path: Path) -> None:
    path = tmp_path / "good.csv"
    path.write_text("\n".join(CSV.splitlines()[:3]) + "\n")
    assert run("import_boxes", str(path))[0] == 0
    status, output = run("import_boxes", str(path))
    assert status == 0 and "0 created, 2 unchanged, 0 rejected" in output


def test_import_boxes_refuses_a_bad_header(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("serial,secret\nX-1,abcdefgh\n")
    with pytest.raises(CommandError, match="bad header"):
        call_command("import_boxes", str(path), stdout=io.StringIO())
    assert Box.objects.count() == 0
