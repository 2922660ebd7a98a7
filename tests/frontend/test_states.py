"""The badge of every state is decided by a table keyed by the choice constants: a new state fails
here until it has a colour."""

from __future__ import annotations

from fleet.commands.choices import CommandState
from fleet.firmware.choices import RolloutState
from frontend.templatetags.states import (
    COMMAND_TONES,
    ROLLOUT_TONES,
    SERVER_TONES,
    command_badge,
    rollout_badge,
    server_badge,
    server_status_label,
)
from provisioning.choices import ServerStatus


def test_every_state_has_a_tone() -> None:
    assert set(ROLLOUT_TONES) == set(RolloutState.values)
    assert set(COMMAND_TONES) == set(CommandState.values)
    assert set(SERVER_TONES) == set(ServerStatus.values)


def test_badge_classes() -> None:
    assert rollout_badge(RolloutState.RUNNING) == "badge ok"
    assert rollout_badge(RolloutState.COMPLETED) == "badge ok plain"
    assert rollout_badge(RolloutState.DRAFT) == "badge"
    assert command_badge(CommandState.EXPIRED) == "badge bad"
    assert command_badge(CommandState.CANCELLED) == "badge"
    assert server_badge(ServerStatus.DRAINING) == "badge warn"
    assert server_badge("unheard-of") == "badge bad"
    assert server_status_label(ServerStatus.DOWN) == "Down"
    assert server_status_label("unheard-of") == "unheard-of"
