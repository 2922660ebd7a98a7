"""The tables of legal moves: what a person may do to a rollout in each of its states, and the
legal upgrade moves, with the helpers every writer uses to apply them.

Rollout services check :data:`ROLLOUT_ACTIONS` under the row lock (``Rollout.allows``), and pages
and the API show the same table (``Rollout.next_actions``). Row-by-row upgrade writers call
:func:`upgrade_transition`; bulk writers (phase opening, dispatch, abort) filter on
:func:`sources_of` so a bulk UPDATE can never make a move the table forbids. A repeated or late
report (``downloading`` after ``installing``) is a no-op, not an error.
"""

from __future__ import annotations

from datetime import datetime
from typing import Protocol

from django.utils import timezone

from fleet.firmware.choices import RolloutAction, RolloutState, UpgradeState


class UpgradeRow(Protocol):
    """What :func:`upgrade_transition` moves (an ``Upgrade``): this module is a pure table the models
    build on, so it names the shape it needs instead of importing them."""

    state: str
    state_changed_at: datetime
    reason: str


A = RolloutAction
R = RolloutState

# A paused rollout may also be paused again (a no-op in rollout_pause, not a move).
ROLLOUT_ACTIONS: dict[str, frozenset[str]] = {
    R.DRAFT: frozenset({A.START, A.ABORT}),
    R.SCHEDULED: frozenset({A.PAUSE, A.ABORT, A.RETRY_FAILED}),
    R.RUNNING: frozenset({A.PAUSE, A.ABORT, A.RETRY_FAILED}),
    R.PAUSED: frozenset({A.RESUME, A.ABORT, A.RETRY_FAILED}),
    # retrying the failed upgrades of a completed rollout runs it again
    R.COMPLETED: frozenset({A.RETRY_FAILED}),
    R.ABORTED: frozenset(),
}


def rollout_actions(state: str) -> tuple[RolloutAction, ...]:
    """The actions a rollout in ``state`` allows, in RolloutAction's order."""
    allowed = ROLLOUT_ACTIONS.get(state, frozenset())
    return tuple(action for action in RolloutAction if action in allowed)


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
    upgrade: UpgradeRow, target: str, *, now: datetime | None = None, reason: str | None = None
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
