"""The legal moves of a box's lifecycle, in one table (a pure module: no database).

::

    (imported) ── claim ──────────────▶ claimed ── unclaim ──▶ unclaimed
        │                               │  ▲ transfer, reassign     │
        │ enroll (factory secret)       └──┘                        │ claim
        ▼                                                           ▼
    unclaimed ───────── decommission (from any state but itself) ──▶ decommissioned (final)

Enrollment with an organisation's enrollment token creates an unknown serial directly as claimed.
Every service of ``provisioning.services`` asks :func:`box_move` before it changes a box, so a refusal
has one wording and one error code whichever edge (API, admin, portal) asked.
"""

from __future__ import annotations

from dataclasses import dataclass

from fleet.core.choices import BoxState
from fleet.core.errors import Conflict, DomainError, Forbidden

UNCLAIMED, CLAIMED, DECOMMISSIONED = BoxState.UNCLAIMED, BoxState.CLAIMED, BoxState.DECOMMISSIONED


@dataclass(frozen=True)
class Move:
    """An action on a box: the states it may start from, the state it leaves the box in (``None``:
    unchanged), and how a refusal from each other state is worded (message, error code)."""

    allowed: dict[str, str | None]
    refusals: dict[str, tuple[str, str]]
    field: str = "box"
    forbidden: bool = False  # refused with 403 (the caller may not) rather than 409 (not now)


MOVES: dict[str, Move] = {
    "enroll": Move(
        allowed={UNCLAIMED: None, CLAIMED: None},
        refusals={DECOMMISSIONED: ("this box is decommissioned and cannot enroll", "decommissioned")},
        field="serial",
        forbidden=True,
    ),
    "claim": Move(
        allowed={UNCLAIMED: CLAIMED},
        refusals={
            DECOMMISSIONED: ("this box is decommissioned", "decommissioned"),
            CLAIMED: ("this box is claimed by another organization", "already_claimed"),
        },
        field="serial",
    ),
    "unclaim": Move(
        allowed={CLAIMED: UNCLAIMED},
        refusals={
            UNCLAIMED: ("only a claimed box can be unclaimed", "not_claimed"),
            DECOMMISSIONED: ("only a claimed box can be unclaimed", "not_claimed"),
        },
    ),
    "transfer": Move(
        allowed={CLAIMED: CLAIMED},
        refusals={
            UNCLAIMED: ("only a claimed box can be transferred", "not_claimed"),
            DECOMMISSIONED: ("only a claimed box can be transferred", "not_claimed"),
        },
    ),
    "reassign_server": Move(
        allowed={CLAIMED: CLAIMED},
        refusals={
            UNCLAIMED: ("only a claimed box can be reassigned", "not_claimed"),
            DECOMMISSIONED: ("only a claimed box can be reassigned", "not_claimed"),
        },
    ),
    "decommission": Move(
        allowed={UNCLAIMED: DECOMMISSIONED, CLAIMED: DECOMMISSIONED},
        refusals={DECOMMISSIONED: ("the box is already decommissioned", "decommissioned")},
    ),
}


def box_move(state: str, action: str) -> str:
    """The state a box in ``state`` is left in by ``action``; raises Conflict (Forbidden for an
    enrollment) naming the field and the reason when the lifecycle does not allow it."""
    move = MOVES[action]
    if state in move.allowed:
        target = move.allowed[state]
        return state if target is None else target
    message, code = move.refusals[state]
    error: type[DomainError] = Forbidden if move.forbidden else Conflict
    raise error(message, field=move.field, code=code)
