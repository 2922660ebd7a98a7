"""otbcompat's answers to what provisioning announces (``provisioning.signals``), which cannot call
otbcompat itself (the layers contract). Each receiver calls one service; connected in
``OtbCompatConfig.ready``."""

from __future__ import annotations

from typing import Any

from fleet.core.audit import Actor
from fleet.core.models import Box
from otbcompat.binding import box_device_revoke


def box_device_credentials_revoked(sender: Any, *, box: Box, actor: Actor, **_: Any) -> dict[str, Any]:
    """Staff revoked the box's own credentials: its OverTheBox device's token and JWTs stop too."""
    return box_device_revoke(actor=actor, box=box)
