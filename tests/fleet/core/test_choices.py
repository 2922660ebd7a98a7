"""The fleet core's WAN choices are the protocol package's (the agent uses the same values)."""

from __future__ import annotations

import otb_protocol

from fleet.core.choices import WanKind, WanMode, WanRole


def test_wan_choices_are_the_protocols() -> None:
    assert tuple(WanKind.values) == otb_protocol.WAN_KINDS
    assert tuple(WanMode.values) == otb_protocol.WAN_MODES
    assert tuple(WanRole.values) == otb_protocol.WAN_ROLES
