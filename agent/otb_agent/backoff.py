"""Capped exponential backoff with full jitter (pure, RNG injectable for tests)."""

from __future__ import annotations

import random
from typing import Optional


class Backoff:
    """delay = uniform(0, min(cap, base * 2**attempt)); attempt grows per failure.

    ``retry_after`` (a server hint) is honoured as a floor: the delay becomes
    ``retry_after + uniform(0, min(cap, base * 2**attempt))`` so a shed fleet does not
    come back in lock-step. A session that stayed up longer than ``reset_after`` seconds
    resets the attempt counter.
    """

    def __init__(
        self,
        base: float = 1.0,
        cap: float = 60.0,
        reset_after: float = 30.0,
        rng: Optional[random.Random] = None,
    ) -> None:
        if base <= 0 or cap < base:
            raise ValueError("need 0 < base <= cap")
        self.base = base
        self.cap = cap
        self.reset_after = reset_after
        self.rng = rng or random.Random()
        self.attempt = 0
        self._connected_at: Optional[float] = None

    def ceiling(self) -> float:
        """Upper bound of the jittered part for the next delay."""
        exp = min(self.attempt, 62)
        return min(self.cap, self.base * (2**exp))

    def next_delay(self, retry_after: Optional[float] = None) -> float:
        ceiling = self.ceiling()
        self.attempt += 1
        jitter = self.rng.uniform(0.0, ceiling)
        if retry_after is not None and retry_after > 0:
            return float(retry_after) + jitter
        return jitter

    def session_started(self, now: float) -> None:
        self._connected_at = now

    def session_ended(self, now: float) -> None:
        """Call when a session that did start ends; resets if it lived long enough."""
        if self._connected_at is not None and now - self._connected_at >= self.reset_after:
            self.attempt = 0
        self._connected_at = None

    def reset(self) -> None:
        self.attempt = 0
        self._connected_at = None
