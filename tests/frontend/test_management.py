"""The seed_demo management command: a second run finds everything in place, and its CSV lets a box
enroll."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import pytest
from otb_agent.collectors.simulated import SimulatedCollector, wans_from_spec
from rest_framework.test import APIClient

from fleet.core.choices import BoxState
from fleet.core.models import Box
from tests.conftest import management_command_run as run

pytestmark = pytest.mark.django_db


def test_seed_demo_runs_twice(settings: Any, tmp_path: Path) -> None:
    settings.VAR_DIR = tmp_path
    settings.STORAGES = {
        **settings.STORAGES,
        "default": {
            "BACKEND": "django.core.files.storage.FileSystemStorage",
            "OPTIONS": {"location": str(tmp_path / "media")},
        },
    }
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
    assert len(rows) == 20 and list(rows[0]) == ["serial", "factory_secret", "claim_code", "wans"]
    # and the CSV secrets let a box enroll
    response = APIClient().post(
        "/api/v1/agent/enroll",
        {"serial": rows[0]["serial"], "factory_secret": rows[0]["factory_secret"]},
        format="json",
    )
    assert response.status_code == 201, response.content


def test_seed_demo_prints_the_address_make_run_serves_on(settings: Any, tmp_path: Path) -> None:
    # given make run serving on a port of its own (it passes OTB_PORT, the settings make LOCAL_URL)
    settings.VAR_DIR = tmp_path
    settings.OTB = {**settings.OTB, "LOCAL_URL": "http://127.0.0.1:30123/"}
    # when the demo is seeded
    status, output = run("seed_demo")
    # then the logins point at that address, not at 8000
    assert status == 0
    assert "URL:      http://127.0.0.1:30123/" in output
    assert "(http://127.0.0.1:30123/admin/)" in output
    assert ":8000" not in output


def test_seeded_wan_policies_name_the_links_the_simulated_boxes_report(settings: Any, tmp_path: Path) -> None:
    # given the demo, seeded
    settings.VAR_DIR = tmp_path
    assert run("seed_demo")[0] == 0
    with (tmp_path / "demo-boxes.csv").open() as handle:
        links = {row["serial"]: wans_from_spec(row["wans"]) for row in csv.DictReader(handle)}
    policies = 0
    for box in Box.objects.filter(state=BoxState.CLAIMED):
        # when the simulator runs the box as devrun starts it (with the CSV's links)
        simulated = SimulatedCollector(box.serial, wans=links[box.serial])
        simulated.configure({"wan_policy": box.wan_policy})
        reported = {wan["iface"]: wan["kind"] for wan in simulated.collect()["wans"]}
        named = {item["name"]: item for item in (box.wan_policy or {}).get("interfaces", [])}
        if not named:
            continue
        policies += 1
        # then the policy names exactly the box's links, with their kinds; the disabled ones are
        # the ones the box does not report
        assert set(named) == {iface for iface, _ in links[box.serial]}, box.serial
        assert all(named[iface]["kind"] == kind for iface, kind in links[box.serial]), box.serial
        assert set(reported) == {name for name, item in named.items() if item["role"] != "disabled"}
    assert policies >= 3
    # and every mode is shown in the demo
    modes = {box.wan_policy.get("mode") for box in Box.objects.exclude(wan_policy__interfaces=[])}
    assert modes == {"aggregate", "failover", "load-balance"}


def test_seed_demo_repairs_policies_naming_links_the_demo_box_lacks(settings: Any, tmp_path: Path) -> None:
    # given a demo seeded by an older version, whose policies named links the boxes do not have
    settings.VAR_DIR = tmp_path
    assert run("seed_demo")[0] == 0
    box = Box.objects.exclude(wan_policy__interfaces=[]).order_by("serial").first()
    assert box is not None
    stale = {"mode": "failover", "interfaces": [{"name": "wan1", "role": "primary", "kind": "fiber"}]}
    kept = Box.objects.exclude(wan_policy__interfaces=[]).exclude(pk=box.pk).order_by("serial").first()
    assert kept is not None
    edited = dict(kept.wan_policy, mode="load-balance")
    Box.objects.filter(pk=box.pk).update(wan_policy=stale)
    Box.objects.filter(pk=kept.pk).update(wan_policy=edited)
    # when the seed runs again
    assert run("seed_demo")[0] == 0
    # then the stale policy is the seed's again, and a policy a person edited sensibly is kept
    box.refresh_from_db()
    kept.refresh_from_db()
    assert "wan1" not in {item["name"] for item in box.wan_policy["interfaces"]}
    assert kept.wan_policy == edited
