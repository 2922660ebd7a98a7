"""A stock OverTheBox box's upgrade is judged by the version it reports afterwards, never by ``done``
alone (fleet/firmware/engine.py, ``_otb_evaluate``): pure decisions on the command row and status."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from fleet.commands.choices import CommandState
from fleet.firmware.choices import UpgradeState as U
from fleet.firmware.engine import otb_version_matches, upgrade_evaluate
from fleet.firmware.models import Upgrade

NOW = dt.datetime(2026, 12, 6, 21, 0, tzinfo=dt.UTC)
SENT = NOW - dt.timedelta(minutes=10)


def evaluate(command_state: str, *, seen: dt.datetime | None, version: str, finished: bool = True) -> Any:
    upgrade = Upgrade(state=U.SENT, sent_at=SENT, progress=0)
    command = {
        "state": command_state,
        "finished_at": SENT + dt.timedelta(minutes=5) if finished else None,
        "error": "usign: verification failed" if command_state == CommandState.FAILED else "",
        "progress": 0,
        "progress_message": "",
    }
    status = {"online": True, "last_seen_at": seen, "firmware_version": version, "box__protocol": "otb"}
    return upgrade_evaluate(
        upgrade,
        version="1.2.0",
        command=command,
        status=status,
        health_window_s=900,
        timeout_s=3600,
        now=NOW,
    )


def test_back_on_the_new_version_succeeds() -> None:
    assert evaluate(CommandState.SUCCEEDED, seen=NOW, version="1.2.0")[0] == U.SUCCEEDED


def test_on_the_new_version_even_when_done_was_lost() -> None:
    # the done PUT after the reboot was dropped (a 401 drops queued calls): the version decides
    assert evaluate(CommandState.SENT, seen=NOW, version="1.2.0", finished=False)[0] == U.SUCCEEDED


def test_done_but_back_on_the_old_version_fails() -> None:
    state, reason, _ = evaluate(CommandState.SUCCEEDED, seen=NOW, version="1.1.3")
    assert state == U.FAILED and "1.1.3" in reason


def test_done_not_seen_since_waits() -> None:
    before_done = SENT + dt.timedelta(minutes=1)
    assert evaluate(CommandState.SUCCEEDED, seen=before_done, version="1.1.3")[0] == U.REBOOTING


def test_error_then_done_stays_failed() -> None:
    # the command failed on error; the later done is only kept on the command (its state is failed)
    state, reason, _ = evaluate(CommandState.FAILED, seen=NOW, version="1.1.3")
    assert state == U.FAILED and "usign" in reason


@pytest.mark.parametrize(
    ("running", "version", "matches"),
    [
        ("1.2.0", "1.2.0", True),
        ("v1.2.0", "1.2.0", True),
        ("1.10.", "1.10.2", True),  # the header's 5-character cut
        ("1.10", "1.10.2", True),  # the same, its trailing dot dropped
        ("1.1", "1.1.4", False),
        ("1.1.0", "1.1.4", False),
        ("1.1.4", "1.1.45", True),  # what a 5-character header cannot tell apart
        ("1.1.3", "1.2.0", False),
        ("", "1.2.0", False),
    ],
)
def test_versions(running: str, version: str, matches: bool) -> None:
    assert otb_version_matches(running, version) is matches
