"""Management commands: import_boxes, create_organization, create_api_token, seed_demo."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from rest_framework.test import APIClient

from fleet.core.choices import BoxState
from fleet.core.models import Box, Membership, Organization

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


def run(*args: Any) -> tuple[int, str]:
    out = io.StringIO()
    try:
        call_command(*args, stdout=out, stderr=io.StringIO())
    except SystemExit as exc:
        return int(exc.code or 0), out.getvalue()
    return 0, out.getvalue()


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


def test_create_organization_and_api_token(capsys: Any) -> None:
    # given an organisation created from the command line
    run("create_organization", "Initech", "--owner", "boss@initech.example", "--password", "pw-initech-1")
    organization = Organization.objects.get(name="Initech")
    assert Membership.objects.get(organization=organization).user.email == "boss@initech.example"
    # when a token is created for its owner
    status, output = run(
        "create_api_token", "boss@initech.example", "--organization", "initech", "--days", "3"
    )
    token = output.strip()
    # then the printed token works against the API
    assert status == 0 and token.startswith("otbu_")
    response = APIClient().get("/api/v1/me", HTTP_AUTHORIZATION=f"Bearer {token}")
    assert response.status_code == 200
    assert response.json()["memberships"][0]["organization"]["name"] == "Initech"
    with pytest.raises(CommandError):
        call_command(
            "create_api_token", "nobody@example.com", "--organization", "Initech", stdout=io.StringIO()
        )
    with pytest.raises(CommandError):
        call_command("create_organization", "Initech", "--owner", "x@example.com", stdout=io.StringIO())


def test_seed_demo_runs_twice(settings: Any, tmp_path: Path) -> None:
    settings.VAR_DIR = tmp_path
    # when the seed runs twice
    status, first = run("seed_demo")
    counts = (Box.objects.count(), Box.objects.filter(state=BoxState.CLAIMED).count())
    status2, second = run("seed_demo")
    # then the second run finds everything in place
    assert status == status2 == 0
    assert counts == (20, 10)
    assert (Box.objects.count(), Box.objects.filter(state=BoxState.CLAIMED).count()) == counts
    assert "0 imported, 20 already there, 0 rejected" in second
    assert "demo@example.com / demo-password-1" in first and "staff@example.com" in first
    assert "http://127.0.0.1:8000/" in first
    claimed = Box.objects.filter(state=BoxState.CLAIMED)
    assert all(box.server_id and box.config_hash for box in claimed)
    assert claimed.exclude(wan_policy__interfaces=[]).count() >= 3
    with (tmp_path / "demo-boxes.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 20 and list(rows[0]) == ["serial", "factory_secret", "claim_code"]
    # and the CSV secrets let a box enroll
    response = APIClient().post(
        "/api/v1/agent/enroll",
        {"serial": rows[0]["serial"], "factory_secret": rows[0]["factory_secret"]},
        format="json",
    )
    assert response.status_code == 201, response.content
