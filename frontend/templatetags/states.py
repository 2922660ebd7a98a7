"""How a state looks on a page: the badge classes of each state, keyed by the choice constants, so
templates show a state without spelling it (``<span class="{{ rollout.state|rollout_badge }}">``).

What a state allows (a rollout's next actions, whether a command is still open) is the model's to
say; this module only picks colours.
"""

from __future__ import annotations

from typing import Any

from django import template

from fleet.commands.choices import CommandState
from fleet.core.choices import BoxProtocol
from fleet.firmware.choices import FAILURE_STATES, IN_FLIGHT_STATES, ReleaseState, RolloutState, UpgradeState
from provisioning.choices import ServerStatus

register = template.Library()

# "ok" green, "warn" amber, "bad" red, "plain" without a background; "" a neutral badge.
ROLLOUT_TONES: dict[str, str] = {
    RolloutState.DRAFT: "",
    RolloutState.SCHEDULED: "",
    RolloutState.RUNNING: "ok",
    RolloutState.PAUSED: "warn",
    RolloutState.COMPLETED: "ok plain",
    RolloutState.ABORTED: "bad",
}
COMMAND_TONES: dict[str, str] = {
    CommandState.PENDING: "warn",
    CommandState.SENT: "warn",
    CommandState.RUNNING: "warn",
    CommandState.SUCCEEDED: "ok",
    CommandState.FAILED: "bad",
    CommandState.EXPIRED: "bad",
    CommandState.CANCELLED: "",
}
RELEASE_TONES: dict[str, str] = {
    ReleaseState.DRAFT: "warn",
    ReleaseState.PUBLISHED: "ok",
    ReleaseState.WITHDRAWN: "bad",
}
UPGRADE_TONES: dict[str, str] = {
    **dict.fromkeys(IN_FLIGHT_STATES, "warn"),
    **dict.fromkeys(FAILURE_STATES, "bad"),
    UpgradeState.SUCCEEDED: "ok",
}
SERVER_TONES: dict[str, str] = {
    ServerStatus.ACTIVE: "ok",
    ServerStatus.DRAINING: "warn",
    ServerStatus.DOWN: "bad",
}


def _badge(tone: str) -> str:
    return f"badge {tone}" if tone else "badge"


@register.filter
def rollout_badge(state: str) -> str:
    return _badge(ROLLOUT_TONES.get(state, ""))


@register.filter
def command_badge(state: str) -> str:
    return _badge(COMMAND_TONES.get(state, ""))


@register.filter
def release_badge(state: str) -> str:
    return _badge(RELEASE_TONES.get(state, ""))


@register.filter
def upgrade_badge(state: str) -> str:
    """Succeeded green, in flight amber, failed red; waiting, cancelled and skipped neutral."""
    return _badge(UPGRADE_TONES.get(state, "plain"))


@register.filter
def server_badge(status: str) -> str:
    return _badge(SERVER_TONES.get(status, "bad"))


@register.filter
def server_status_label(status: str) -> str:
    """The label of a server status given as its value (the capacity summary carries values)."""
    return str(ServerStatus(status).label) if status in ServerStatus.values else status


@register.filter
def box_protocol(box: Any) -> str:
    """How a box talks to us, with its version: "OverTheBox firmware 1.1.3" or "otb-agent 0.9.2"."""
    if getattr(box, "protocol", None) == BoxProtocol.OTB:
        return f"OverTheBox firmware {box.firmware_version or '(version not reported yet)'}"
    return f"otb-agent {getattr(box, 'agent_version', '') or '(version not reported yet)'}"


OTB_DEVICE_TONES: dict[str, str] = {"pending": "warn", "linked": "warn", "active": "ok", "revoked": "bad"}


@register.filter
def otb_device_badge(state: str) -> str:
    return f"badge {OTB_DEVICE_TONES.get(state, '')}".strip()
