"""Sliding-window failure counters in Redis, for brute-force protection of secrets (claim codes,
factory secrets, passwords).

A counter keeps the times of the failures of one identifier (a serial within an organisation, an IP
address, a username) in a Redis sorted set scored by time; a failure counts for ``window_s`` seconds
after it happened, so there is no window edge at which a burst of ``2 * limit`` guesses fits. The set
never holds more than ``limit`` entries (older ones cannot change the answer), so its size is bounded
whatever a caller sends.

Two ways to use one:

* ``FailureGuard`` (claims, enrollment): one attempt checked against several limits before the secret
  is checked, counted against them only if the secret was wrong. A limit marked ``exact`` reserves a
  slot atomically (one Lua script: trim, count, add) and gives it back unless the attempt failed, so
  that limit also holds for concurrent attempts (checked-then-counted, twenty parallel guesses at one
  serial would all pass the check).
* ``retry_after_s`` / ``hit`` / ``reset`` (sign-ins, where Django's form checks the password in between).

Identifiers are hashed into the key, so no caller-supplied text ends up in a Redis key verbatim. Time
comes from ``clock`` (seconds since the epoch), which tests replace with a settable one.
"""

from __future__ import annotations

import hashlib
import math
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from django.conf import settings
from django.core.cache import cache

from fleet.core.errors import RateLimited

# Seconds since the epoch. Module-level so tests can set the time (``monkeypatch.setattr``) and move a
# window without sleeping.
clock: Callable[[], float] = time.time

# KEYS[1] the set; ARGV: now, window_s, limit, member. Drops the failures that left the window; with
# room left, adds ``member`` at ``now`` and answers {1, count}; otherwise answers {0, retry_after_ms}:
# how long until the oldest failure that keeps the count at the limit leaves the window.
_RESERVE = """
local now = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local limit = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
local count = redis.call('ZCARD', KEYS[1])
if count >= limit then
    local oldest = redis.call('ZRANGE', KEYS[1], count - limit, count - limit, 'WITHSCORES')
    return {0, math.ceil((tonumber(oldest[2]) + window - now) * 1000)}
end
redis.call('ZADD', KEYS[1], now, ARGV[4])
redis.call('PEXPIRE', KEYS[1], math.ceil(window * 1000))
return {1, count + 1}
"""

# KEYS[1] the set; ARGV: now, window_s, limit, member. Records a failure whatever the count, keeping
# only the newest ``limit`` entries. Answers the count.
_HIT = """
local now = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local limit = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
redis.call('ZADD', KEYS[1], now, ARGV[4])
redis.call('ZREMRANGEBYRANK', KEYS[1], 0, -(limit + 1))
redis.call('PEXPIRE', KEYS[1], math.ceil(window * 1000))
return redis.call('ZCARD', KEYS[1])
"""

_scripts: dict[str, Any] = {}


def _redis() -> Any:
    """The Redis client of the default cache (one per process, ``fleet.core.cache``)."""
    return cache._cache.get_client(write=True)  # type: ignore[attr-defined]


def _script(source: str) -> Any:
    client = _redis()
    script = _scripts.get(source)
    if script is None or script.registered_client is not client:
        script = _scripts[source] = client.register_script(source)
    return script


def _setting(name: str) -> int:
    value: Any = settings.OTB[name]
    return int(value)


def wait_text(seconds: int) -> str:
    """A wait for people: "45 seconds", "1 minute", "12 minutes" (rounded up to whole minutes)."""
    if seconds < 60:
        return f"{seconds} second{'s' if seconds != 1 else ''}"
    minutes = math.ceil(seconds / 60)
    return f"{minutes} minute{'s' if minutes != 1 else ''}"


@dataclass(frozen=True)
class FailureCounter:
    """At most ``limit`` failures per identifier within any ``window_s`` seconds (a sliding window)."""

    scope: str
    limit: int
    window_s: int

    def key(self, identifier: str) -> str:
        hashed = hashlib.sha256(identifier.encode("utf-8", "surrogatepass")).hexdigest()[:32]
        return cache.make_and_validate_key(f"throttle:{self.scope}:{hashed}")

    def _failures(self, identifier: str) -> list[float]:
        """The times of the failures still in the window, oldest first (at most ``limit``)."""
        now = clock()
        rows = _redis().zrangebyscore(
            self.key(identifier), f"({now - self.window_s}", "+inf", withscores=True
        )
        return [float(score) for _, score in rows]

    def count(self, identifier: str) -> int:
        return len(self._failures(identifier))

    def exceeded(self, identifier: str) -> bool:
        return self.count(identifier) >= self.limit

    def retry_after_s(self, identifier: str) -> int:
        """Seconds until one more attempt is allowed (0 when it is allowed now)."""
        failures = self._failures(identifier)
        if len(failures) < self.limit:
            return 0
        return max(math.ceil(failures[len(failures) - self.limit] + self.window_s - clock()), 1)

    def hit(self, identifier: str) -> int:
        """Record one failure now; returns the count in the window."""
        member = uuid.uuid4().hex
        return int(
            _script(_HIT)(keys=[self.key(identifier)], args=[clock(), self.window_s, self.limit, member])
        )

    def reserve(self, identifier: str) -> tuple[str | None, int]:
        """Atomically: if the identifier is under its limit, count one attempt now and return
        (its member, 0); otherwise (None, seconds until an attempt is allowed)."""
        member = uuid.uuid4().hex
        taken, value = _script(_RESERVE)(
            keys=[self.key(identifier)], args=[clock(), self.window_s, self.limit, member]
        )
        if int(taken):
            return member, 0
        return None, max(math.ceil(int(value) / 1000), 1)

    def release(self, identifier: str, member: str) -> None:
        """Give back a reserved attempt that turned out not to be a failure."""
        _redis().zrem(self.key(identifier), member)

    def reset(self, identifier: str) -> None:
        _redis().delete(self.key(identifier))


@dataclass(frozen=True)
class Limit:
    """One counter an attempt falls under: the identifier it is counted by, the refusal (a sentence
    with ``{wait}`` where the time to wait goes), and whether the attempt is counted in advance
    (``exact``: the limit then also holds for concurrent attempts, and attempts in flight take room).
    Exact limits suit identifiers one person uses at a time (a serial); an address may carry many
    people's concurrent, correct attempts, so its failures are counted when they happen."""

    counter: FailureCounter
    identifier: str
    refusal: str
    exact: bool = False


@dataclass
class FailureGuard:
    """One attempt at a secret, refused before the secret is checked when any of its limits is reached.

    ``with FailureGuard(limits) as attempt:`` checks each limit in order (an exact one atomically
    reserves a slot), raising RateLimited with the time to wait for the first one reached (slots
    already taken are given back). Inside, call ``attempt.failed()`` when the secret is wrong: it then
    counts against every limit. Leaving the block any other way (success, or an error that is not
    about the secret) counts nothing. ``attempt.succeeded()`` also clears the identifiers of the
    limits listed in ``clear`` (indexes into ``limits``)."""

    limits: list[Limit]
    clear: tuple[int, ...] = ()
    _taken: list[tuple[Limit, str]] = field(default_factory=list)
    _failed: bool = False
    _succeeded: bool = False

    def __enter__(self) -> FailureGuard:
        for limit in sorted(self.limits, key=lambda limit: limit.exact):
            if limit.exact:
                member, wait = limit.counter.reserve(limit.identifier)
                if member is not None:
                    self._taken.append((limit, member))
            else:
                wait = limit.counter.retry_after_s(limit.identifier)
            if wait:
                self._give_back()
                raise RateLimited(limit.refusal.format(wait=wait_text(wait)), retry_after_s=wait)
        return self

    def failed(self) -> None:
        self._failed = True

    def succeeded(self) -> None:
        self._succeeded = True

    def _give_back(self) -> None:
        for limit, member in self._taken:
            limit.counter.release(limit.identifier, member)
        self._taken = []

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        if self._failed:
            for limit in self.limits:
                if not limit.exact:
                    limit.counter.hit(limit.identifier)
            return
        cleared = [self.limits[index] for index in self.clear] if self._succeeded else []
        # A cleared limit's reservation goes with its key: one round trip, not two.
        self._taken = [(limit, member) for limit, member in self._taken if limit not in cleared]
        self._give_back()
        for limit in cleared:
            limit.counter.reset(limit.identifier)


# --- the counters ---------------------------------------------------------------------------------


def _window() -> int:
    return _setting("AUTH_FAILURE_WINDOW_S")


def enroll_failures_per_serial() -> FailureCounter:
    return FailureCounter(scope="enroll-serial", limit=_setting("ENROLL_MAX_FAILURES"), window_s=_window())


def enroll_failures_per_ip() -> FailureCounter:
    return FailureCounter(scope="enroll-ip", limit=_setting("ENROLL_MAX_FAILURES_PER_IP"), window_s=_window())


def claim_failures_per_serial_and_organization() -> FailureCounter:
    return FailureCounter(scope="claim-serial-org", limit=_setting("CLAIM_MAX_FAILURES"), window_s=_window())


def claim_failures_per_ip() -> FailureCounter:
    return FailureCounter(scope="claim-ip", limit=_setting("CLAIM_MAX_FAILURES_PER_IP"), window_s=_window())


def login_failures_per_user() -> FailureCounter:
    return FailureCounter(scope="login-user", limit=_setting("LOGIN_MAX_FAILURES"), window_s=_window())


def login_failures_per_ip() -> FailureCounter:
    return FailureCounter(scope="login-ip", limit=_setting("LOGIN_MAX_FAILURES_PER_IP"), window_s=_window())


def claim_guard(*, serial: str, organization_id: Any, source_ip: str | None) -> FailureGuard:
    """The limits of a claim attempt: the source address's failures across every serial and
    organisation (brute force from one place), then this organisation's failures on this serial
    (case-folded, as serials are matched). Another organisation's failures on the serial never count:
    they cannot keep the rightful owner out. A successful claim clears the (serial, organisation)
    count."""
    return FailureGuard(
        limits=[
            Limit(
                claim_failures_per_ip(),
                source_ip or "unknown",
                "Too many failed claim attempts from your address. Try again in {wait}.",
            ),
            Limit(
                claim_failures_per_serial_and_organization(),
                f"{serial.strip().upper()}\x00{organization_id}",
                "Too many failed claim attempts for this serial number. Try again in {wait}.",
                exact=True,
            ),
        ],
        clear=(1,),
    )


def enroll_guard(*, serial: str, source_ip: str | None) -> FailureGuard:
    """The limits of an enrollment attempt: the source address, then the serial. A successful
    enrollment clears the serial's count."""
    return FailureGuard(
        limits=[
            Limit(
                enroll_failures_per_ip(),
                source_ip or "unknown",
                "too many failed enrollment attempts from this address; retry in {wait}",
            ),
            Limit(
                enroll_failures_per_serial(),
                serial,
                "too many failed enrollment attempts for this serial; retry in {wait}",
                exact=True,
            ),
        ],
        clear=(1,),
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
        if identifier:
            wait_s = counter.retry_after_s(identifier)
            if wait_s:
                return f"Too many failed sign-in attempts. Try again in {wait_text(wait_s)}."
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
