"""The one table of legal upgrade moves, and the helpers every writer uses to apply it.

Row-by-row writers call :func:`upgrade_transition`; bulk writers (phase opening, dispatch, abort)
filter on :func:`sources_of` so a bulk UPDATE can never make a move the table forbids.
A repeated or late report (``downloading`` after ``installing``) is a no-op, not an error.
"""

from __future__ import annotations

from datetime import datetime

from django.utils import timezone

from fleet.firmware.choices import UpgradeState
from fleet.firmware.models import Upgrade

U = UpgradeState

# Progress order of the in-flight stages: a report may skip stages but never go back.
STAGE_ORDER = [U.SENT, U.DOWNLOADING, U.VERIFYING, U.INSTALLING, U.REBOOTING]
_ENDINGS = {U.SUCCEEDED, U.FAILED, U.TIMED_OUT, U.CANCELLED}

TRANSITIONS: dict[str, frozenset[str]] = {
    U.PENDING: frozenset({U.SCHEDULED, U.SENT, U.CANCELLED, U.SKIPPED}),
    U.SCHEDULED: frozenset({U.PENDING, U.SENT, U.CANCELLED, U.SKIPPED}),
    U.SENT: frozenset({*STAGE_ORDER[1:], *_ENDINGS}),
    U.DOWNLOADING: frozenset({*STAGE_ORDER[2:], *_ENDINGS}),
    U.VERIFYING: frozenset({*STAGE_ORDER[3:], *_ENDINGS}),
    U.INSTALLING: frozenset({*STAGE_ORDER[4:], *_ENDINGS}),
    U.REBOOTING: frozenset({U.SUCCEEDED, U.FAILED, U.TIMED_OUT}),
    # retry of a failed box (a person's decision, audited by upgrades_retry_failed)
    U.FAILED: frozenset({U.PENDING}),
    U.TIMED_OUT: frozenset({U.PENDING}),
    U.SUCCEEDED: frozenset(),
    U.CANCELLED: frozenset(),
    U.SKIPPED: frozenset(),
}


class IllegalTransition(ValueError):
    def __init__(self, current: str, target: str) -> None:
        super().__init__(f"an upgrade cannot go from {current} to {target}")
        self.current = current
        self.target = target


def can_transition(current: str, target: str) -> bool:
    return target in TRANSITIONS.get(current, frozenset())


def sources_of(target: str) -> list[str]:
    """Every state from which ``target`` may be reached (for bulk UPDATE ... WHERE state IN ...)."""
    return [state for state, targets in TRANSITIONS.items() if target in targets]


def timestamp_field(state: str) -> str:
    return f"{state}_at"


def upgrade_transition(
    upgrade: Upgrade, target: str, *, now: datetime | None = None, reason: str | None = None
) -> list[str]:
    """Move ``upgrade`` to ``target`` in memory; return the fields to save.

    Returns ``[]`` for a repeat (already in ``target``) or a late report of an earlier stage; raises
    :class:`IllegalTransition` for anything else the table forbids.
    """
    current = upgrade.state
    if current == target:
        return []
    if not can_transition(current, target):
        if current in STAGE_ORDER and target in STAGE_ORDER:
            return []  # a late progress report: the upgrade is already further along
        raise IllegalTransition(current, target)
    now = now or timezone.now()
    upgrade.state = target
    upgrade.state_changed_at = now
    setattr(upgrade, timestamp_field(target), now)
    fields = ["state", "state_changed_at", timestamp_field(target)]
    if reason is not None:
        upgrade.reason = reason[:2000]
        fields.append("reason")
    return fields
