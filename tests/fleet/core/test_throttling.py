"""The sliding-window failure counters (fleet.core.throttling) against the real Redis: the window
slides (a settable clock, no sleeps), the refusal says how long to wait, exact limits hold under
concurrency, and a counter's set stays bounded."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from fleet.core.errors import RateLimited
from fleet.core.throttling import FailureCounter, FailureGuard, Limit, _redis, wait_text


def _counter(scope: str = "test", limit: int = 3, window_s: int = 600) -> FailureCounter:
    return FailureCounter(scope=scope, limit=limit, window_s=window_s)


def test_failures_leave_the_window_one_by_one(throttle_clock: Any) -> None:
    # given three failures (the limit) at t0, t0+100 and t0+200 in a 600 s window
    counter = _counter()
    for _ in range(3):
        counter.hit("who")
        throttle_clock.advance(100)
    # when it is t0+300, then the identifier is over its limit until the first failure ages out
    assert counter.exceeded("who") and counter.retry_after_s("who") == 300
    # a fixed window would forget all three at once; this one lets exactly one more attempt in at t0+600
    throttle_clock.advance(299)
    assert counter.exceeded("who") and counter.retry_after_s("who") == 1
    throttle_clock.advance(1)
    assert not counter.exceeded("who") and counter.count("who") == 2 and counter.retry_after_s("who") == 0
    counter.hit("who")
    assert counter.exceeded("who") and counter.retry_after_s("who") == 100


def test_the_set_of_a_counter_stays_bounded(throttle_clock: Any) -> None:
    counter = _counter(limit=3)
    for _ in range(50):
        counter.hit("flood")
        throttle_clock.advance(1)
    assert _redis().zcard(counter.key("flood")) == 3
    # the answer is the one the newest three failures give
    # (the oldest of them, 3 s ago, leaves the window in 597 s)
    assert counter.retry_after_s("flood") == 597


def test_identifiers_are_hashed_into_the_key() -> None:
    key = _counter().key("DEMO-0011\x00org")
    assert "DEMO" not in key and ":throttle:test:" in key


def test_a_guard_counts_only_failed_attempts_and_refuses_with_the_wait(throttle_clock: Any) -> None:
    # given a guard over an address (counted on failure) and a serial (reserved in advance)
    address, serial = _counter("address", limit=10), _counter("serial", limit=2)

    def guard() -> FailureGuard:
        return FailureGuard(
            [
                Limit(address, "10.0.0.1", "address: wait {wait}"),
                Limit(serial, "S1", "serial: wait {wait}", exact=True),
            ],
            clear=(1,),
        )

    # when an attempt succeeds and another ends in an unrelated error, nothing is counted
    with guard() as attempt:
        attempt.succeeded()
    with pytest.raises(ValueError), guard():
        raise ValueError("not about the secret")
    assert address.count("10.0.0.1") == serial.count("S1") == 0
    # two failures count against both limits
    for _ in range(2):
        with guard() as attempt:
            attempt.failed()
        throttle_clock.advance(60)
    assert address.count("10.0.0.1") == serial.count("S1") == 2
    # then the next attempt is refused before it runs, saying how long to wait
    with pytest.raises(RateLimited) as refused, guard():
        pytest.fail("the attempt must not run")
    assert refused.value.retry_after_s == 600 - 120
    assert refused.value.message == "serial: wait 8 minutes"
    # and a refused attempt is not a failure of the address
    assert address.count("10.0.0.1") == 2


def test_an_exact_limit_holds_for_concurrent_attempts() -> None:
    # given a limit of 3 failures on one serial
    serial = _counter("serial", limit=3)
    barrier = threading.Barrier(20)
    outcomes: list[str] = []
    lock = threading.Lock()

    def attempt() -> None:
        barrier.wait(timeout=10)
        try:
            with FailureGuard([Limit(serial, "S1", "wait {wait}", exact=True)]) as guard:
                guard.failed()  # every guess is wrong
            outcome = "guessed"
        except RateLimited:
            outcome = "refused"
        with lock:
            outcomes.append(outcome)

    # when 20 wrong guesses arrive at the same moment
    threads = [threading.Thread(target=attempt) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    # then exactly 3 were let through to the secret
    assert sorted(outcomes) == ["guessed"] * 3 + ["refused"] * 17


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(1, "1 second"), (45, "45 seconds"), (60, "1 minute"), (61, "2 minutes"), (900, "15 minutes")],
)
def test_wait_text(seconds: int, text: str) -> None:
    assert wait_text(seconds) == text
