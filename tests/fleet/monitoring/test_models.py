"""What an alert's state says, as the pages ask it (no database: the answer is the state's)."""

from __future__ import annotations

import pytest

from fleet.monitoring.choices import OPEN_ALERT_STATES, AlertState
from fleet.monitoring.models import Alert


@pytest.mark.parametrize("state", AlertState.values)
def test_an_alert_is_firing_only_when_firing(state: str) -> None:
    assert Alert(state=state).is_firing is (state == AlertState.FIRING)


def test_open_alerts_are_pending_or_firing() -> None:
    assert set(OPEN_ALERT_STATES) == set(AlertState.values) - {AlertState.RESOLVED}
