"""Maintenance windows (Python and SQL agree, in the organisation's time zone), version ordering,
phase sizes, the transition table, and the signing commands."""

from __future__ import annotations

import base64
import datetime as dt
import io
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command
from django.db import connection
from otb_agent import ed25519

from fleet.firmware.choices import UpgradeState
from fleet.firmware.models import DEFAULT_WINDOW_END, DEFAULT_WINDOW_START, Release
from fleet.firmware.targeting import phase_sizes
from fleet.firmware.transitions import IllegalTransition, sources_of, upgrade_transition
from fleet.firmware.versions import version_in_range, version_key
from fleet.firmware.windows import in_window, window_sql

UTC = dt.UTC
# Wednesday 2026-01-14 (Paris is UTC+1 in winter)
WEDNESDAY = dt.date(2026, 1, 14)


def at(hour: int, minute: int = 0, day: dt.date = WEDNESDAY) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(hour, minute), tzinfo=UTC)


def sql_in_window(now: dt.datetime, zone: str, days: list[int] | None, start: Any, end: Any) -> bool:
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT {window_sql()} FROM (SELECT %(zone)s::text AS timezone) o "
            "LEFT JOIN (SELECT %(days)s::smallint[] AS window_days, %(start)s::time AS window_start, "
            "%(end)s::time AS window_end WHERE %(has)s) p ON true",
            {"now": now, "zone": zone, "days": days, "start": start, "end": end, "has": days is not None},
        )
        return cursor.fetchone()[0]


CASES = [
    # (utc time, zone, days, start, end, expected)
    (at(1, 30), "Europe/Paris", None, None, None, True),  # 02:30 Paris, default nightly window
    (at(4, 30), "Europe/Paris", None, None, None, False),  # 05:30 Paris
    (at(2, 30), "UTC", None, None, None, True),
    (at(12), "America/New_York", None, None, None, False),
    (at(22, 30), "UTC", [2], dt.time(22), dt.time(3), True),  # Wednesday night, past midnight window
    (at(1, 0, dt.date(2026, 1, 15)), "UTC", [2], dt.time(22), dt.time(3), True),  # its Thursday morning part
    (at(1, 0, WEDNESDAY), "UTC", [2], dt.time(22), dt.time(3), False),  # Tuesday's night is not listed
    (at(10), "UTC", [2], dt.time(0), dt.time(0), True),  # all day on Wednesday
    (at(10), "UTC", [3], dt.time(0), dt.time(0), False),
    (at(2, 30), "Not/AZone", None, None, None, True),  # an unknown zone reads as UTC
]


@pytest.mark.django_db
@pytest.mark.parametrize(("now", "zone", "days", "start", "end", "expected"), CASES)
def test_python_and_sql_windows_agree(
    now: dt.datetime, zone: str, days: Any, start: Any, end: Any, expected: bool
) -> None:
    assert in_window(now, zone, days, start, end) is expected
    assert sql_in_window(now, zone, days, start, end) is expected


def test_default_window_is_nightly() -> None:
    assert (dt.time(2), dt.time(5)) == (DEFAULT_WINDOW_START, DEFAULT_WINDOW_END)


def test_versions_order_numerically_with_prereleases_first() -> None:
    ordered = ["1.2.0", "1.9.9", "1.10.0", "2.0.0-rc1", "2.0.0-rc2", "2.0.0", "24.10.1-otb2", "24.10.1-otb10"]
    assert sorted(ordered, key=version_key) == ordered
    assert version_in_range("1.5", "1.0", "2.0") and not version_in_range("2.0", "1.0", "2.0")
    assert not version_in_range("", None, None)


def test_phase_sizes_cover_every_box_once() -> None:
    assert phase_sizes([1, 10, 50, 100], 1000) == [10, 90, 400, 500]
    assert phase_sizes([1, 10, 100], 5) == [1, 0, 4]
    assert phase_sizes([100], 0) == [0]
    assert sum(phase_sizes([3, 7, 100], 12_345)) == 12_345


def test_transitions_are_checked_in_one_place() -> None:
    from fleet.firmware.models import Upgrade

    upgrade = Upgrade(state=UpgradeState.SENT, state_changed_at=at(0))
    assert upgrade_transition(upgrade, UpgradeState.INSTALLING, now=at(1)) == [
        "state",
        "state_changed_at",
        "installing_at",
    ]
    # a late report of an earlier stage and a repeat are no-ops
    assert upgrade_transition(upgrade, UpgradeState.DOWNLOADING) == []
    assert upgrade_transition(upgrade, UpgradeState.INSTALLING) == []
    assert upgrade.state == UpgradeState.INSTALLING and upgrade.installing_at == at(1)
    with pytest.raises(IllegalTransition):
        upgrade_transition(upgrade, UpgradeState.PENDING)
    succeeded = Upgrade(state=UpgradeState.SUCCEEDED, state_changed_at=at(0))
    with pytest.raises(IllegalTransition):
        upgrade_transition(succeeded, UpgradeState.FAILED)
    assert set(sources_of(UpgradeState.SENT)) == {UpgradeState.PENDING, UpgradeState.SCHEDULED}


@pytest.mark.django_db
def test_keygen_and_sign_firmware_produce_a_signature_boxes_accept(tmp_path: Path, settings: Any) -> None:
    # given a key made by firmware_keygen and an image
    settings.STORAGES = {
        **settings.STORAGES,
        "default": {
            "BACKEND": "django.core.files.storage.FileSystemStorage",
            "OPTIONS": {"location": str(tmp_path / "media")},
        },
    }
    key_file, image = tmp_path / "signing.key", tmp_path / "fw.bin"
    image.write_bytes(b"firmware bytes" * 1000)
    out = io.StringIO()
    call_command("firmware_keygen", str(key_file), stdout=out)
    public = out.getvalue().strip()
    settings.OTB = {**settings.OTB, "FIRMWARE_SIGNING_PUBLIC_KEY": public}
    assert key_file.stat().st_mode & 0o777 == 0o600

    # when signing and creating a published release in one go
    out = io.StringIO()
    call_command(
        "sign_firmware",
        str(image),
        key=str(key_file),
        create="9.9.9",
        models="OTB-v2c",
        publish=True,
        stdout=out,
    )
    signature = out.getvalue().strip()

    # then the agent's verifier accepts it, and the release is published with it
    ed25519.verify(base64.b64decode(public), base64.b64decode(signature), image.read_bytes())
    release = Release.objects.get(version="9.9.9")
    assert release.state == "published" and release.signature == signature and release.size == 14000
    # and keygen refuses to overwrite a key
    from django.core.management.base import CommandError

    with pytest.raises(CommandError):
        call_command("firmware_keygen", str(key_file), stdout=io.StringIO())
