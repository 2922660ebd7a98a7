"""The reconnect backoff (otb_agent.backoff): cap and jitter bounds, reset after a long session,
Retry-After as a floor, bad parameters refused."""

from __future__ import annotations

import random

import pytest
from otb_agent.backoff import Backoff


def test_backoff_cap_and_jitter_bounds():
    b = Backoff(base=1.0, cap=60.0, rng=random.Random(7))
    ceilings = []
    for _ in range(12):
        ceiling = b.ceiling()
        d = b.next_delay()
        assert 0.0 <= d <= ceiling
        ceilings.append(ceiling)
    assert ceilings[:7] == [1, 2, 4, 8, 16, 32, 60]
    assert max(ceilings) == 60.0
    delays = [Backoff(rng=random.Random(s)).next_delay() for s in range(50)]
    assert len(set(delays)) == 50  # jittered, not lock-step


def test_backoff_reset_after_long_session():
    b = Backoff(base=1.0, cap=60.0, reset_after=30.0, rng=random.Random(1))
    for _ in range(5):
        b.next_delay()
    b.session_started(100.0)
    b.session_ended(110.0)  # short session: keep growing
    assert b.attempt == 5
    b.session_started(200.0)
    b.session_ended(231.0)
    assert b.attempt == 0
    assert b.next_delay() <= 1.0


def test_backoff_retry_after_is_a_floor():
    b = Backoff(base=1.0, cap=60.0, rng=random.Random(3))
    for _ in range(10):
        ceiling = b.ceiling()
        d = b.next_delay(retry_after=30.0)
        assert 30.0 <= d <= 30.0 + ceiling


def test_backoff_rejects_bad_params():
    with pytest.raises(ValueError):
        Backoff(base=0)
    with pytest.raises(ValueError):
        Backoff(base=10, cap=1)
