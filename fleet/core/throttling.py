"""Fixed-window failure counters in Redis (through the Django cache), for brute-force protection.

A counter is checked *before* a secret is verified and bumped after a failed attempt, so a caller
over the limit learns nothing more about the secret until the window passes. Identifiers (serials,
IP addresses) are hashed into the key so no caller-supplied text ends up in a Redis key verbatim.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.core.cache import cache

from fleet.core.errors import RateLimited


def _setting(name: str) -> int:
    value: Any = settings.OTB[name]
    return int(value)


@dataclass(frozen=True)
class FailureCounter:
    """Counts failures per identifier in windows of ``window_s`` seconds; ``limit`` failures allowed."""

    scope: str
    limit: int
    window_s: int

    def key(self, identifier: str) -> str:
        hashed = hashlib.sha256(identifier.encode("utf-8", "surrogatepass")).hexdigest()[:32]
        return f"throttle:{self.scope}:{hashed}"

    def count(self, identifier: str) -> int:
        return int(cache.get(self.key(identifier)) or 0)

    def exceeded(self, identifier: str) -> bool:
        return self.count(identifier) >= self.limit

    def hit(self, identifier: str) -> int:
        """Record one failure; the window starts with the first failure (INCR keeps the expiry)."""
        key = self.key(identifier)
        cache.add(key, 0, timeout=self.window_s)
        try:
            return int(cache.incr(key))
        except ValueError:  # expired between add and incr
            cache.set(key, 1, timeout=self.window_s)
            return 1

    def reset(self, identifier: str) -> None:
        cache.delete(self.key(identifier))

    def retry_after_s(self, identifier: str) -> int:
        """Seconds until the current window ends (the whole window if Redis cannot tell)."""
        try:
            client = cache._cache.get_client(self.key(identifier))  # type: ignore[attr-defined]
            ttl = client.ttl(cache.make_and_validate_key(self.key(identifier)))
        except Exception:  # the exact TTL is a courtesy; the window is a safe answer
            return self.window_s
        return int(ttl) if ttl and ttl > 0 else self.window_s

    def check(self, identifier: str, *, message: str, field: str | None = None) -> None:
        """Raise RateLimited (429 with Retry-After) when the identifier is over the limit."""
        if self.exceeded(identifier):
            raise RateLimited(message, retry_after_s=self.retry_after_s(identifier), field=field)


def enroll_failures_per_serial() -> FailureCounter:
    return FailureCounter(
        scope="enroll-serial",
        limit=_setting("ENROLL_MAX_FAILURES"),
        window_s=_setting("AUTH_FAILURE_WINDOW_S"),
    )


def enroll_failures_per_ip() -> FailureCounter:
    return FailureCounter(
        scope="enroll-ip",
        limit=_setting("ENROLL_MAX_FAILURES_PER_IP"),
        window_s=_setting("AUTH_FAILURE_WINDOW_S"),
    )


def claim_failures_per_serial() -> FailureCounter:
    return FailureCounter(
        scope="claim-serial",
        limit=_setting("CLAIM_MAX_FAILURES"),
        window_s=_setting("AUTH_FAILURE_WINDOW_S"),
    )


def login_failures_per_user() -> FailureCounter:
    return FailureCounter(
        scope="login-user",
        limit=_setting("LOGIN_MAX_FAILURES"),
        window_s=_setting("AUTH_FAILURE_WINDOW_S"),
    )


def login_failures_per_ip() -> FailureCounter:
    return FailureCounter(
        scope="login-ip",
        limit=_setting("LOGIN_MAX_FAILURES_PER_IP"),
        window_s=_setting("AUTH_FAILURE_WINDOW_S"),
    )


def _login_counters(username: str, source: str) -> list[tuple[FailureCounter, str]]:
    """(counter, identifier) pairs of a sign-in attempt: the username (case-folded) and the address."""
    return [
        (login_failures_per_user(), username.strip().lower()[:150]),
        (login_failures_per_ip(), source),
    ]


def login_refusal(*, username: str, source: str) -> str | None:
    """The message to refuse a sign-in with, before its password is checked, when the username or the
    address is over its limit; None when the attempt may go ahead."""
    for counter, identifier in _login_counters(username, source):
        if identifier and counter.exceeded(identifier):
            wait_s = counter.retry_after_s(identifier)
            return f"Too many failed sign-in attempts. Try again in {wait_s} seconds."
    return None


def login_failed(*, username: str, source: str) -> None:
    """Count a failed sign-in against the username and the address."""
    for counter, identifier in _login_counters(username, source):
        if identifier:
            counter.hit(identifier)


def login_succeeded(*, username: str, source: str) -> None:
    """A successful sign-in clears the username's count (not the address's)."""
    counter, identifier = _login_counters(username, source)[0]
    counter.reset(identifier)
