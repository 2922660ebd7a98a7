"""The session gate (batched connect / hello / end of agent sessions) against real PostgreSQL."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest
from channels.db import database_sync_to_async
from django.utils import timezone

from fleet.core.models import AgentCredential, AuditLog, Box, Event
from fleet.live.gate import SessionGate, SessionsUnavailable
from fleet.telemetry.models import BoxStatus
from fleet.telemetry.services import agent_session_penalize
from tests.fleet.live.test_agent import hello

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.asyncio]


@pytest.fixture
async def gate() -> Any:
    gate = SessionGate()
    yield gate
    await gate.close()


@pytest.fixture
def fleet_of(people: Any, box_factory: Any, agent_token_factory: Any) -> Any:
    def make(count: int) -> list[tuple[Box, str]]:
        boxes = []
        for _ in range(count):
            box = box_factory(
                organization=people.org, config_hash="c" * 64, firmware_version="1.0.0", agent_version="0.1.0"
            )
            boxes.append((box, agent_token_factory(box)))
        return boxes

    return database_sync_to_async(make)


@database_sync_to_async
def events_of(kind: str) -> list[Event]:
    return list(Event.objects.filter(kind=kind))


@database_sync_to_async
def statuses() -> dict[Any, BoxStatus]:
    return {status.box_id: status for status in BoxStatus.objects.all()}


async def connect_all(gate: SessionGate, tokens: list[str | None]) -> list[Any]:
    return await asyncio.gather(
        *(gate.connect(token=token, session_id=f"s{index}") for index, token in enumerate(tokens))
    )


async def test_a_storm_of_connects_is_served_in_one_batch_with_the_right_grants(
    gate: SessionGate, fleet_of: Any, box_factory: Any, agent_token_factory: Any
) -> None:
    # given 30 live boxes, a revoked token, a decommissioned box and junk
    fleet = await fleet_of(32)
    revoked_box, revoked = fleet[30]
    gone_box, gone = fleet[31]
    await database_sync_to_async(AgentCredential.objects.filter(box=revoked_box).update)(
        revoked_at=timezone.now()
    )
    await database_sync_to_async(Box.objects.filter(pk=gone_box.pk).update)(decommissioned_at=timezone.now())
    tokens: list[str | None] = [token for _, token in fleet[:30]]
    tokens += [revoked, gone, "otba_unknown", "otbu_wrong-kind", None, "otba_" + "x" * 300]
    # when they all connect at once
    grants = await connect_all(gate, tokens)
    # then each live token gets its own box, everything else None, in one lookup batch
    assert [grant.box_id for grant in grants[:30]] == [box.pk for box, _ in fleet[:30]]
    assert all(grant.organization_id == fleet[0][0].organization_id for grant in grants[:30])
    assert grants[30:] == [None] * 6
    assert gate.stats["connects_batches"] == 1
    assert gate.stats["connects"] == 33  # malformed tokens never reach the database
    # and each box's current session is the one that connected
    rows = await statuses()
    assert {box.pk: rows[box.pk].session_id for box, _ in fleet[:30]} == {
        box.pk: f"s{index}" for index, (box, _) in enumerate(fleet[:30])
    }
    assert revoked_box.pk not in rows and gone_box.pk not in rows


async def test_two_connects_of_one_box_in_one_batch_the_last_wins(gate: SessionGate, fleet_of: Any) -> None:
    [(box, token)] = await fleet_of(1)
    first, second = await connect_all(gate, [token, token])
    assert first.box_id == second.box_id == box.pk
    # the loser's hello gets no welcome (its session closes as replaced); the winner's does
    assert await gate.hello(box_id=box.pk, session_id="s0", hello=hello()) is None
    welcome = await gate.hello(box_id=box.pk, session_id="s1", hello=hello())
    assert welcome is not None and welcome["session_id"] == "s1"


async def test_hellos_of_a_batch_mark_boxes_online_with_events_and_audit(
    gate: SessionGate, fleet_of: Any
) -> None:
    # given 20 connected boxes, one of which comes back with a new firmware and agent
    fleet = await fleet_of(20)
    await connect_all(gate, [token for _, token in fleet])
    upgraded = fleet[7][0]
    # when they all say hello at once
    welcomes = await asyncio.gather(
        *(
            gate.hello(
                box_id=box.pk,
                session_id=f"s{index}",
                hello=hello(firmware_version="2.0.0", agent_version="0.2.0") if box == upgraded else hello(),
            )
            for index, (box, _) in enumerate(fleet)
        )
    )
    # then every one is welcomed with its box's desired hash, in one batch
    welcomed = [welcome for welcome in welcomes if welcome is not None]
    assert [welcome["session_id"] for welcome in welcomed] == [f"s{index}" for index in range(20)]
    assert {welcome["desired_config_hash"] for welcome in welcomed} == {"c" * 64}
    assert gate.stats["hellos_batches"] == 1
    rows = await statuses()
    assert all(rows[box.pk].online and rows[box.pk].boot_id == "boot-1" for box, _ in fleet)
    # and the timeline has a session and an online event per box, and the firmware change
    assert len(await events_of("session_opened")) == 20
    assert {event.box_id for event in await events_of("box_online")} == {box.pk for box, _ in fleet}
    [changed] = await events_of("firmware_changed")
    assert (changed.box_id, changed.data) == (upgraded.pk, {"from": "1.0.0", "to": "2.0.0"})
    # and only the upgraded box's versions changed, audited with before and after
    refreshed = await database_sync_to_async(Box.objects.get)(pk=upgraded.pk)
    assert (refreshed.firmware_version, refreshed.agent_version) == ("2.0.0", "0.2.0")
    [entry] = await database_sync_to_async(list)(AuditLog.objects.filter(action="box.versions_reported"))
    assert entry.box_id == upgraded.pk and entry.actor_label == f"box:{upgraded.serial}"
    assert entry.before == {"firmware_version": "1.0.0", "agent_version": "0.1.0"}
    assert entry.after == {"firmware_version": "2.0.0", "agent_version": "0.2.0"}


async def test_a_hello_the_database_refuses_does_not_refuse_the_others(
    gate: SessionGate, fleet_of: Any
) -> None:
    # given five connected boxes, one of whose hellos cannot be stored (agent_version is varchar(32);
    # the protocol refuses it earlier, the gate must still survive it)
    fleet = await fleet_of(5)
    await connect_all(gate, [token for _, token in fleet])
    bad = fleet[2][0]
    results = await asyncio.gather(
        *(
            gate.hello(
                box_id=box.pk,
                session_id=f"s{index}",
                hello=hello(agent_version="x" * 40) if box == bad else hello(),
            )
            for index, (box, _) in enumerate(fleet)
        ),
        return_exceptions=True,
    )
    # then only that hello fails, and nothing of it was written
    assert isinstance(results[2], SessionsUnavailable)
    assert all(isinstance(result, dict) for index, result in enumerate(results) if index != 2)
    rows = await statuses()
    assert rows[bad.pk].online is False
    assert [box.pk for box, _ in fleet if rows[box.pk].online] == [box.pk for box, _ in fleet if box != bad]
    assert {event.box_id for event in await events_of("session_opened")} == {
        box.pk for box, _ in fleet if box != bad
    }


async def test_disconnect_marks_offline_only_the_current_session(gate: SessionGate, fleet_of: Any) -> None:
    [(box, token)] = await fleet_of(1)
    await gate.connect(token=token, session_id="old")
    await gate.connect(token=token, session_id="new")
    await gate.hello(box_id=box.pk, session_id="new", hello=hello())
    # the end of a replaced session changes nothing
    assert await gate.disconnect(box_id=box.pk, session_id="old", code=4002) is False
    assert (await statuses())[box.pk].online is True
    # the end of the current one marks the box offline with its events
    assert await gate.disconnect(box_id=box.pk, session_id="new", code=1006) is True
    status = (await statuses())[box.pk]
    assert status.online is False and status.offline_since is not None and status.disconnected_at is not None
    [closed] = await events_of("session_closed")
    assert closed.data == {"session_id": "new", "code": 1006}
    [offline] = await events_of("box_offline")
    assert offline.data == {"reason": "disconnected", "code": 1006}
    # and ending it again marks nothing offline twice
    assert await gate.disconnect(box_id=box.pk, session_id="new", code=1006) is False
    assert len(await events_of("box_offline")) == 1


async def test_a_penalized_box_is_refused_without_taking_the_session(
    gate: SessionGate, fleet_of: Any
) -> None:
    [(box, token)] = await fleet_of(1)
    await gate.connect(token=token, session_id="first")
    await database_sync_to_async(agent_session_penalize)(box_id=box.pk, seconds=30)
    grant = await gate.connect(token=token, session_id="second")
    assert grant is not None
    assert grant.box_id == box.pk and 1 <= grant.retry_after_s <= 30
    assert (await statuses())[box.pk].session_id == "first"
    # and once the penalty is over the box gets in again
    await database_sync_to_async(BoxStatus.objects.filter(box_id=box.pk).update)(
        penalty_until=timezone.now() - timedelta(seconds=1)
    )
    again = await gate.connect(token=token, session_id="third")
    assert again is not None and again.retry_after_s == 0


async def test_an_unreachable_database_fails_the_call_clearly(fleet_of: Any) -> None:
    [(box, token)] = await fleet_of(1)
    gate = SessionGate(conninfo={"host": "127.0.0.1", "port": 1, "dbname": "nowhere", "user": "nobody"})
    try:
        with pytest.raises(SessionsUnavailable):
            await gate.connect(token=token, session_id="s")
        with pytest.raises(SessionsUnavailable):
            await gate.hello(box_id=box.pk, session_id="s", hello=hello())
    finally:
        await gate.close()
