"""The WAN link rules (fleet.telemetry.transitions): pure functions, no database."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from fleet.telemetry.transitions import (
    DEGRADED_LOSS_PCT,
    DEGRADED_RTT_MS,
    BoxWans,
    WanState,
    boxes_due,
    is_degraded,
    samples_in_order,
    wans_advance,
)

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def wan(iface: str = "wan1", *, up: bool = True, loss: float | None = 0.0, rtt: float | None = 10.0) -> dict:
    return {
        "iface": iface,
        "label": iface.upper(),
        "kind": "fiber",
        "up": up,
        "loss_pct": loss,
        "rtt_ms": rtt,
    }


def sample(seconds: float, *wans: dict) -> tuple[datetime, dict[str, Any]]:
    return at(seconds), {"wans": list(wans)}


def kinds(result: BoxWans) -> list[tuple[str, str, datetime]]:
    return [(transition.iface, transition.kind, transition.ts) for transition in result.transitions]


# -- the degraded rule ----------------------------------------------------------------------------


def test_degraded_means_up_and_lossy_or_slow() -> None:
    assert not is_degraded(wan())
    assert is_degraded(wan(loss=DEGRADED_LOSS_PCT))
    assert not is_degraded(wan(loss=DEGRADED_LOSS_PCT - 0.01))
    assert is_degraded(wan(rtt=DEGRADED_RTT_MS))
    assert not is_degraded(wan(rtt=None, loss=None))
    # a link that is down is down, not degraded
    assert not is_degraded(wan(up=False, loss=100.0, rtt=None))


# -- first samples --------------------------------------------------------------------------------


def test_a_new_link_reported_up_starts_up_without_an_event() -> None:
    result = wans_advance({}, [[sample(0, wan())]])
    assert result.transitions == []
    link = result.links["wan1"]
    assert link.state == WanState(up=True, up_changed_at=at(0), degraded_since=None)
    assert link.changed is True  # a new row must be written
    assert link.latest["iface"] == "wan1" and link.latest_ts == at(0)


def test_a_new_link_reported_down_is_a_wan_down() -> None:
    result = wans_advance({}, [[sample(0, wan(up=False))]])
    assert kinds(result) == [("wan1", "wan_down", at(0))]
    assert result.links["wan1"].state == WanState(up=False, up_changed_at=at(0))


def test_a_known_link_unchanged_is_not_a_change() -> None:
    previous = {"wan1": WanState(up=True, up_changed_at=at(-600))}
    result = wans_advance(previous, [[sample(0, wan()), sample(10, wan())]])
    assert result.transitions == []
    assert result.links["wan1"].state == previous["wan1"]
    assert result.links["wan1"].changed is False
    assert result.changed is False
    assert result.links["wan1"].latest_ts == at(10)


def test_a_known_link_going_down_then_up() -> None:
    previous = {"wan1": WanState(up=True, up_changed_at=at(-600))}
    result = wans_advance(previous, [[sample(0, wan(up=False))], [sample(10, wan())]])
    assert kinds(result) == [("wan1", "wan_down", at(0)), ("wan1", "wan_up", at(10))]
    assert result.links["wan1"].state == WanState(up=True, up_changed_at=at(10))
    assert result.changed is True


# -- flapping within one batch --------------------------------------------------------------------


def test_flapping_within_one_batch_gives_every_transition_in_order() -> None:
    previous = {"wan1": WanState(up=True, up_changed_at=at(-600))}
    states = [False, True, False, True, False]
    messages = [[sample(index, wan(up=up))] for index, up in enumerate(states)]
    result = wans_advance(previous, messages)
    assert [kind for _, kind, _ in kinds(result)] == ["wan_down", "wan_up", "wan_down", "wan_up", "wan_down"]
    assert [ts for _, _, ts in kinds(result)] == [at(index) for index in range(5)]
    assert result.links["wan1"].state == WanState(up=False, up_changed_at=at(4))


def test_a_flap_that_ends_where_it_started_still_records_both_transitions() -> None:
    previous = {"wan1": WanState(up=True, up_changed_at=at(-600))}
    result = wans_advance(previous, [[sample(0, wan(up=False)), sample(5, wan(up=True))]])
    assert kinds(result) == [("wan1", "wan_down", at(0)), ("wan1", "wan_up", at(5))]
    assert result.links["wan1"].state.up_changed_at == at(5)
    assert result.links["wan1"].changed is True


# -- degraded enter / leave -----------------------------------------------------------------------


def test_degraded_since_is_the_first_degraded_sample_of_the_run() -> None:
    previous = {"wan1": WanState(up=True, up_changed_at=at(-600))}
    result = wans_advance(
        previous,
        [[sample(0, wan(loss=10.0)), sample(10, wan(loss=20.0)), sample(20, wan(rtt=900.0, loss=0.0))]],
    )
    assert result.transitions == []
    assert result.links["wan1"].state.degraded_since == at(0)
    assert result.links["wan1"].changed is True


def test_degraded_clears_on_the_first_healthy_sample() -> None:
    previous = {"wan1": WanState(up=True, up_changed_at=at(-600), degraded_since=at(-60))}
    result = wans_advance(previous, [[sample(0, wan(loss=50.0)), sample(10, wan())]])
    assert result.links["wan1"].state.degraded_since is None
    assert result.links["wan1"].changed is True


def test_a_run_of_degradation_carried_over_is_not_a_change() -> None:
    previous = {"wan1": WanState(up=True, up_changed_at=at(-600), degraded_since=at(-60))}
    result = wans_advance(previous, [[sample(0, wan(loss=50.0))]])
    assert result.links["wan1"].state.degraded_since == at(-60)
    assert result.links["wan1"].changed is False


def test_going_down_ends_the_degradation() -> None:
    previous = {"wan1": WanState(up=True, up_changed_at=at(-600), degraded_since=at(-60))}
    result = wans_advance(previous, [[sample(0, wan(up=False, loss=100.0, rtt=None))]])
    assert result.links["wan1"].state == WanState(up=False, up_changed_at=at(0), degraded_since=None)


# -- order ----------------------------------------------------------------------------------------


def test_the_samples_of_a_message_apply_in_time_order() -> None:
    # given a message whose samples arrive out of time order
    previous = {"wan1": WanState(up=True, up_changed_at=at(-600))}
    message = [sample(20, wan(up=True)), sample(0, wan(up=False)), sample(10, wan(up=False))]
    result = wans_advance(previous, [message])
    # then it went down at 0 and came back at 20; the row shows the latest sample
    assert kinds(result) == [("wan1", "wan_down", at(0)), ("wan1", "wan_up", at(20))]
    assert result.links["wan1"].latest_ts == at(20)


def test_messages_apply_in_seq_order_even_when_a_clock_went_back() -> None:
    # given seq 1 at t=100 (down) then seq 2 stamped t=50 (up): seq order is the order of events
    previous = {"wan1": WanState(up=True, up_changed_at=at(-600))}
    result = wans_advance(previous, [[sample(100, wan(up=False))], [sample(50, wan(up=True))]])
    assert kinds(result) == [("wan1", "wan_down", at(100)), ("wan1", "wan_up", at(50))]
    assert result.links["wan1"].state.up is True


def test_equal_times_keep_the_order_the_agent_sent() -> None:
    ordered = list(samples_in_order([[sample(5, wan("a")), sample(5, wan("b")), sample(1, wan("c"))]]))
    assert [pair[1]["wans"][0]["iface"] for pair in ordered] == ["c", "a", "b"]


# -- several links, unknown and silent ones -------------------------------------------------------


def test_links_are_independent_and_an_unreported_link_is_left_alone() -> None:
    previous = {
        "wan1": WanState(up=True, up_changed_at=at(-600)),
        "lte0": WanState(up=False, up_changed_at=at(-300)),
    }
    result = wans_advance(previous, [[sample(0, wan("wan1"), wan("wan2", up=False))]])
    # wan2 is a new link reported down; lte0 was not reported and is not in the result
    assert kinds(result) == [("wan2", "wan_down", at(0))]
    assert set(result.links) == {"wan1", "wan2"}
    assert result.links["wan1"].changed is False and result.links["wan2"].changed is True


def test_the_link_name_function_decides_which_row_a_reading_is() -> None:
    previous = {"wan1": WanState(up=True, up_changed_at=at(-600))}
    result = wans_advance(
        previous, [[sample(0, wan("wan1\x00"))]], name=lambda reading: reading["iface"].replace("\x00", "")
    )
    assert set(result.links) == {"wan1"}
    assert result.transitions == []


def test_no_samples_no_links() -> None:
    result = wans_advance({"wan1": WanState(up=True, up_changed_at=at(0))}, [])
    assert result.links == {} and result.transitions == [] and result.changed is False


# -- which boxes' rows to write ---------------------------------------------------------------------


def test_boxes_due_are_the_changed_ones_and_those_not_written_for_a_while() -> None:
    unchanged = wans_advance({"wan1": WanState(up=True, up_changed_at=at(0))}, [[sample(1, wan())]])
    changed = wans_advance({}, [[sample(1, wan())]])
    silent = wans_advance({}, [])
    advances = {"fresh": unchanged, "stale": unchanged, "new": changed, "never": unchanged, "silent": silent}
    last_written = {"fresh": 99.5, "stale": 98.0, "new": 99.9}
    due = boxes_due(advances, last_written, now=100.0, min_interval=1.0)
    assert due == {"stale", "new", "never"}
