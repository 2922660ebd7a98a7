"""Rollout phases (fleet.firmware.targeting): the phase sizes cover every eligible box exactly once."""

from __future__ import annotations

from fleet.firmware.targeting import phase_sizes


def test_phase_sizes_cover_every_box_once() -> None:
    assert phase_sizes([1, 10, 50, 100], 1000) == [10, 90, 400, 500]
    assert phase_sizes([1, 10, 100], 5) == [1, 0, 4]
    assert phase_sizes([100], 0) == [0]
    assert sum(phase_sizes([3, 7, 100], 12_345)) == 12_345
