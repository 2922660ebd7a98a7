"""The server's choices for values the agent also uses are the protocol package's."""

from __future__ import annotations

import otb_protocol

from fleet.commands.choices import CommandKind
from fleet.core.choices import WanKind, WanMode, WanRole


def test_wan_choices_are_the_protocols() -> None:
    assert tuple(WanKind.values) == otb_protocol.WAN_KINDS
    assert tuple(WanMode.values) == otb_protocol.WAN_MODES
    assert tuple(WanRole.values) == otb_protocol.WAN_ROLES


def test_command_kinds_are_the_protocols() -> None:
    assert tuple(CommandKind.values) == otb_protocol.COMMAND_KINDS
