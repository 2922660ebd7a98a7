"""What a command's state says, as the pages ask it (no database: the answer is the state's)."""

from __future__ import annotations

import pytest

from fleet.commands.choices import FINISHED_STATES, OPEN_STATES, CommandState
from fleet.commands.models import Command


@pytest.mark.parametrize("state", CommandState.values)
def test_a_command_is_open_or_finished(state: str) -> None:
    command = Command(state=state)
    assert command.is_open is (state in OPEN_STATES)
    assert command.is_finished is (state in FINISHED_STATES)
    assert command.is_open is not command.is_finished
    assert command.is_running is (state == CommandState.RUNNING)
