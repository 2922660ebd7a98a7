"""The command kinds are the protocol package's (the agent uses the same values)."""

from __future__ import annotations

import otb_protocol

from fleet.commands.choices import REMOTE_ACCESS_KINDS, CommandKind


def test_command_kinds_are_the_protocols() -> None:
    assert tuple(kind for kind in CommandKind.values if kind not in REMOTE_ACCESS_KINDS) == (
        otb_protocol.COMMAND_KINDS
    )
