"""The command kinds are the protocol package's (the agent uses the same values), plus the kinds only
stock OverTheBox boxes understand (otbcompat maps every kind to an OTB action)."""

from __future__ import annotations

import otb_protocol

from fleet.commands.choices import OTB_ONLY_KINDS, CommandKind


def test_command_kinds_are_the_protocols() -> None:
    agent_kinds = tuple(kind for kind in CommandKind.values if kind not in OTB_ONLY_KINDS)
    assert agent_kinds == otb_protocol.COMMAND_KINDS
    assert set(OTB_ONLY_KINDS) <= set(CommandKind.values)
