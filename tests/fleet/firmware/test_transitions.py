"""What a rollout may do next: the one table (transitions.ROLLOUT_ACTIONS), the model's reading of it
(``Rollout.next_actions``, ``allows``, ``can_*``), and the services refusing exactly what it refuses;
an upgrade's moves, checked in one place (``upgrade_transition``)."""

from __future__ import annotations

from typing import Any

import pytest

from fleet.core.audit import Actor
from fleet.core.errors import Conflict
from fleet.firmware.choices import RolloutAction, RolloutState, UpgradeState
from fleet.firmware.models import Rollout
from fleet.firmware.services import rollout_act
from fleet.firmware.transitions import ROLLOUT_ACTIONS, IllegalTransition, sources_of, upgrade_transition
from tests.fleet.firmware.firmware_helpers import make_release
from tests.fleet.firmware.test_windows import at

A = RolloutAction
R = RolloutState

EXPECTED: dict[str, tuple[RolloutAction, ...]] = {
    R.DRAFT: (A.START, A.ABORT),
    R.SCHEDULED: (A.PAUSE, A.ABORT, A.RETRY_FAILED),
    R.RUNNING: (A.PAUSE, A.ABORT, A.RETRY_FAILED),
    R.PAUSED: (A.RESUME, A.ABORT, A.RETRY_FAILED),
    R.COMPLETED: (A.RETRY_FAILED,),
    R.ABORTED: (),
}


def test_every_rollout_state_has_a_row() -> None:
    assert set(ROLLOUT_ACTIONS) == set(R.values) == set(EXPECTED)
    assert all(set(actions) <= set(A.values) for actions in ROLLOUT_ACTIONS.values())


@pytest.mark.parametrize("state", R.values)
def test_next_actions_for_every_state(state: str) -> None:
    # given a rollout in that state (no database needed: the answer is the state's)
    rollout = Rollout(state=state)
    # then its next actions are the table's, in RolloutAction's order
    assert rollout.next_actions == EXPECTED[state]
    for action in A:
        assert rollout.allows(action) is (action in EXPECTED[state]), action
    assert (
        rollout.can_start,
        rollout.can_pause,
        rollout.can_resume,
        rollout.can_abort,
        rollout.can_retry_failed,
    ) == tuple(action in EXPECTED[state] for action in A)
    assert rollout.is_paused is (state == R.PAUSED)


def test_an_unknown_action_or_state_allows_nothing() -> None:
    assert not Rollout(state=R.RUNNING).allows("explode")
    assert Rollout(state="melted").next_actions == ()


@pytest.mark.django_db
@pytest.mark.parametrize("state", R.values)
@pytest.mark.parametrize("action", A.values)
def test_the_services_refuse_exactly_what_the_table_refuses(state: str, action: str) -> None:
    # given a rollout of a published release, in the state
    rollout = Rollout.objects.create(name=f"{state} {action}", release=make_release("5.0.0"), state=state)
    actor = Actor.system("test")
    refused = action not in EXPECTED[state] and not (action == A.PAUSE and state == R.PAUSED)
    # when the action is taken through the one entry point the API and the console share
    if refused:
        # then a 409 naming the state, and the rollout unchanged
        with pytest.raises(Conflict) as conflict:
            rollout_act(actor=actor, rollout=rollout, action=action)
        assert conflict.value.field == "state"
        rollout.refresh_from_db()
        assert rollout.state == state
    else:
        after, retried = rollout_act(actor=actor, rollout=rollout, action=action)
        assert (retried is not None) is (action == A.RETRY_FAILED)
        assert after.state in R.values


@pytest.mark.django_db
def test_the_state_an_action_leads_to() -> None:
    release = make_release("5.1.0")
    actor = Actor.system("test")

    def after(state: str, action: str) -> str:
        rollout = Rollout.objects.create(name=f"{state} {action}", release=release, state=state)
        result: Any = rollout_act(actor=actor, rollout=rollout, action=action)
        return str(result[0].state)

    assert after(R.DRAFT, A.START) == R.RUNNING
    assert after(R.RUNNING, A.PAUSE) == R.PAUSED
    assert after(R.PAUSED, A.PAUSE) == R.PAUSED  # pausing again is a no-op
    assert after(R.PAUSED, A.RESUME) == R.RUNNING
    assert after(R.SCHEDULED, A.ABORT) == R.ABORTED
    assert after(R.COMPLETED, A.RETRY_FAILED) == R.COMPLETED  # nothing failed: nothing to run again


def test_transitions_are_checked_in_one_place() -> None:
    from fleet.firmware.models import Upgrade

    upgrade = Upgrade(state=UpgradeState.SENT, state_changed_at=at(0))
    assert upgrade_transition(upgrade, UpgradeState.INSTALLING, now=at(1)) == [
        "state",
        "state_changed_at",
        "installing_at",
    ]
    # a late report of an earlier stage and a repeat are no-ops
    assert upgrade_transition(upgrade, UpgradeState.DOWNLOADING) == []
    assert upgrade_transition(upgrade, UpgradeState.INSTALLING) == []
    assert upgrade.state == UpgradeState.INSTALLING and upgrade.installing_at == at(1)
    with pytest.raises(IllegalTransition):
        upgrade_transition(upgrade, UpgradeState.PENDING)
    succeeded = Upgrade(state=UpgradeState.SUCCEEDED, state_changed_at=at(0))
    with pytest.raises(IllegalTransition):
        upgrade_transition(succeeded, UpgradeState.FAILED)
    assert set(sources_of(UpgradeState.SENT)) == {UpgradeState.PENDING, UpgradeState.SCHEDULED}
