"""The idle poll of stock OverTheBox boxes, answered on the event loop.

A box polls ``GET /1.0/devices/{id}/actions/todo`` about once a second when told nothing, and once per
``wait`` delay otherwise; nearly every answer is "wait". Through Django each would cost a thread hop,
the middleware stack and two ORM queries. This ASGI wrapper answers exactly the idle case itself:

- the Bearer JWT is checked with the same code as Django's path (``otbcompat.jwt``: HS256, our keys,
  not expired) and its device must be the one in the path;
- ONE prepared query on a small async psycopg pool reads what decides the answer: the device is not
  revoked and the JWT's generation is current, and either it is linked to no box, or it is confirmed,
  its box runs its desired configuration and has no pending unexpired command;
- when the database does not answer (pool timeout, connection refused) a validly signed box is paced
  with ``wait`` rather than handed to Django, which would fail it too: an error makes it poll again
  within a second;
- the poll is noted for presence in memory and written to Redis once a second for all boxes of the
  process (one HSET of many fields; ``otbcompat.presence`` flushes them to the database).

Anything else (no or bad JWT, another device, a command or a derived action due, an unexpected
error) goes to Django unchanged: Django stays the one place that hands out actions, writes and
reports errors.

**The idle cache.** Most polls ask the same question with the same JWT and get the same answer, so an
idle answer is kept in memory per device (with the JWT it was given for) for up to
``OTB_COMPAT_IDLE_CACHE_S``, and a poll that matches it is answered with no JWT check (the same token
string was verified; only its ``exp`` is compared) and no query. It is forgotten at once, in every
process, through PostgreSQL ``LISTEN otb_todo``: triggers (migration ``otbcompat.0004``) notify when a
command becomes pending, a box's config hashes change, or a device is revoked, renewed, linked,
confirmed or deleted. The cache is used only while the listener is connected; losing it empties the
cache (notifications may have been missed), and an idle answer read while a notification arrived is
not kept. The listener proves it hears: at start and after 30 s without a notification it notifies
itself and waits up to 5 s for it (a dead connection, or a transaction-mode pooler that accepts LISTEN
and delivers nothing, turns the cache off). Measured in ``bench/otb_poll.py`` (docs/otb-protocol.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from dataclasses import dataclass
from typing import Any, cast

import psycopg
import redis.asyncio as aioredis
from django.conf import settings
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from fleet.core.live_connections import conninfo_from_settings
from fleet.core.metrics import OTB_TODO_POLLS
from otbcompat.jwt import JwtExpired, JwtInvalid, jwt_decode
from otbcompat.models import OtbDevice
from otbcompat.presence import clean_version, seen_key, seen_value

logger = logging.getLogger(__name__)

TODO_PATH = re.compile(r"^/1\.0/devices/([0-9a-fA-F-]{36})/actions/todo$")
PRESENCE_WRITE_INTERVAL_S = 1.0
NOTIFY_CHANNEL = "otb_todo"
LISTEN_PROBE_S = 30.0  # with no notification for this long, the listener checks its connection
LISTEN_PROBE_TIMEOUT_S = 5.0
LISTEN_BACKOFF_MAX_S = 30.0
_QUERY = f"""
SELECT d.revoked_at IS NULL, d.jwt_generation, d.box_id, d.confirmed_at IS NOT NULL,
    b.config_hash = '' OR b.config_hash = b.applied_config_hash,
    EXISTS (
        SELECT 1 FROM commands_command c
        WHERE c.box_id = d.box_id AND c.state = 'pending' AND c.expires_at > now()
    )
FROM {OtbDevice._meta.db_table} d LEFT JOIN fleet_box b ON b.id = d.box_id
WHERE d.id = %s
"""  # noqa: S608 (identifiers from the models)

ANSWERED_CACHE = OTB_TODO_POLLS.labels("cache")
ANSWERED_EARLY = OTB_TODO_POLLS.labels("early")  # from the cache, in the HTTP parser (otbcompat.http)
ANSWERED_QUERY = OTB_TODO_POLLS.labels("query")
ANSWERED_PACED = OTB_TODO_POLLS.labels("paced")
ANSWERED_DJANGO = OTB_TODO_POLLS.labels("django")

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


def wait_body() -> bytes:
    delay = int(cast(dict[str, Any], settings.OTB)["OTB_COMPAT_POLL_DELAY_S"])
    return b'{"id": null, "action": "wait", "arguments": {"delay": %d}}' % delay


def poll_credentials(headers: Iterable[tuple[bytes, bytes]]) -> tuple[str | None, str | None]:
    """(the Bearer token, ``X-Overthebox-Version``) of a poll's headers (ASGI's and uvicorn's parser
    both give lower-case names); None for what is missing, the token for a non-Bearer authorization."""
    authorization = version = None
    for name, value in headers:
        if name == b"authorization":
            authorization = value
        elif name == b"x-overthebox-version":
            version = value
    token = (
        authorization[7:].strip().decode("latin-1")
        if authorization is not None and authorization.startswith(b"Bearer ")
        else None
    )
    return token, None if version is None else version.decode("latin-1")


def idle_cache_s() -> float:
    return float(cast(dict[str, Any], settings.OTB).get("OTB_COMPAT_IDLE_CACHE_S", 0))


@dataclass(slots=True)
class Idle:
    """A device found idle: the JWT it was found with and until when that holds."""

    token: str
    exp: float  # the JWT's
    until: float  # time.monotonic() deadline of this entry
    box_id: str  # "" for a pending device
    version: str | None  # the X-Overthebox-Version it sent, and as noted for presence
    clean_version: str


ACTIVE: OtbTodoFastPath | None = None


class OtbTodoFastPath:
    """Wraps the HTTP application; see the module docstring for what it answers itself."""

    def __init__(self, app: Any, *, pool_size: int = 4) -> None:
        self.app = app
        self.pool_size = pool_size
        global ACTIVE
        ACTIVE = self
        self._pool: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._redis: Any = None
        self._seen: dict[str, str] = {}
        self._writer: asyncio.Task[None] | None = None
        self._listener: asyncio.Task[None] | None = None
        self._body = wait_body()
        self._start, self._end = self._messages(self._body)
        # the idle cache: device id -> Idle; box id -> its devices' ids (box notifications)
        self._idle_for: dict[str, Idle] = {}
        self._box_devices: dict[str, set[str]] = {}
        self._cache_s = 0.0
        self.listening = False
        self.invalidations = 0  # notifications (and listener losses) so far: a fill that saw one is dropped

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "GET":
            match = TODO_PATH.match(scope["path"])
            if match is not None:
                if await self._idle(scope, match.group(1)):
                    # copies: a server may consume what it is sent (channels' test communicator does)
                    await send(self._start.copy())
                    await send(self._end.copy())
                    return
                ANSWERED_DJANGO.inc()
        await self.app(scope, receive, send)

    async def _idle(self, scope: Scope, path_id: str) -> bool:
        token, version = poll_credentials(scope["headers"])
        if not token:
            return False
        now = time.time()
        if self.idle_known(path_id, token, version, now):
            return True
        try:
            claims = jwt_decode(token, settings.OTB_COMPAT_JWT_KEYS, now=now)
            device_id = uuid.UUID(str(claims.get("sub")))
            if device_id != uuid.UUID(path_id):
                return False
        except (JwtInvalid, JwtExpired, ValueError):
            return False
        try:
            await self._ensure_loop_state()
            invalidations = self.invalidations
            async with self._pool.connection(timeout=2.0) as conn:
                cursor = await conn.execute(_QUERY, (device_id,), prepare=True)
                row = await cursor.fetchone()
        except (PoolTimeout, psycopg.OperationalError):
            # The database is saturated or down: Django would fail the same way, and a box that gets an
            # error polls again within a second. A box whose JWT we signed is paced instead (``wait``
            # tells nothing and does nothing; a command waits one more delay); not noted as seen.
            logger.warning("OTB todo fast path: database unavailable; pacing the box", exc_info=True)
            ANSWERED_PACED.inc()
            return True
        except Exception:  # anything else is Django's to report; the fast path just steps aside
            logger.warning("OTB todo fast path unavailable; deferring to Django", exc_info=True)
            return False
        if row is None:
            return False
        not_revoked, generation, box_id, confirmed, config_applied, pending = row
        if not not_revoked or claims.get("gen") != generation:
            return False
        if box_id is not None and (not confirmed or not config_applied or pending):
            return False
        key, cleaned = str(device_id), clean_version(version)
        self._seen[key] = seen_value(box_id=box_id, version=cleaned, at=now)
        # kept only while the listener hears (it runs when the cache is on) and heard nothing meanwhile
        if self.listening and invalidations == self.invalidations and key == path_id:
            box = "" if box_id is None else str(box_id)
            until = time.monotonic() + self._cache_s
            self._keep(key, Idle(token, float(claims["exp"]), until, box, version, cleaned))
        ANSWERED_QUERY.inc()
        return True

    def _keep(self, device_id: str, idle: Idle) -> None:
        self._forget(device_id)
        self._idle_for[device_id] = idle
        if idle.box_id:
            self._box_devices.setdefault(idle.box_id, set()).add(device_id)

    def idle_known(
        self, path_id: str, token: str, version: str | None, now: float, *, counter: Any = ANSWERED_CACHE
    ) -> bool:
        """Whether the idle answer kept for ``path_id`` holds for this JWT; noted for presence if so.
        Synchronous: also called by the HTTP protocol (otbcompat.http) before any ASGI task exists."""
        known = self._idle_for.get(path_id)
        if (
            known is None
            or known.token != token
            or now >= known.exp
            or time.monotonic() >= known.until
            or not self.listening
        ):
            return False
        if version != known.version:
            known.version, known.clean_version = version, clean_version(version)
        self._seen[path_id] = seen_value(box_id=known.box_id, version=known.clean_version, at=now)
        counter.inc()
        return True

    @property
    def wait_body(self) -> bytes:
        return self._body

    def _forget(self, device_id: str) -> None:
        known = self._idle_for.pop(device_id, None)
        if known is not None and known.box_id:
            devices = self._box_devices.get(known.box_id)
            if devices is not None:
                devices.discard(device_id)
                if not devices:
                    del self._box_devices[known.box_id]

    def invalidate(self, payload: str) -> None:
        """A notification: ``b:<box id>`` or ``d:<device id>`` may no longer be idle (``probe:…``: a
        listener checking its own connection, nothing to forget)."""
        kind, _, ident = payload.partition(":")
        if kind == "probe":
            return
        self.invalidations += 1
        if kind == "d":
            self._forget(ident)
        elif kind == "b":
            for device_id in list(self._box_devices.get(ident, ())):
                self._forget(device_id)
        else:  # not ours to read: forget everything rather than keep a stale answer
            self._forget_all()

    def _forget_all(self) -> None:
        self.invalidations += 1
        self._idle_for.clear()
        self._box_devices.clear()

    async def _listen(self) -> None:
        """Keep ``LISTEN otb_todo`` open; the idle cache is used only while it is."""
        backoff = 0.5
        while True:
            try:
                conn = await psycopg.AsyncConnection.connect(
                    **conninfo_from_settings(role=f"otb-todo-listen:{os.getpid()}"), autocommit=True
                )
                async with conn:
                    await conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
                    await self._probe(conn)
                    self._forget_all()
                    self.listening, backoff = True, 0.5
                    while True:
                        async for notify in conn.notifies(timeout=LISTEN_PROBE_S):
                            self.invalidate(notify.payload)
                        await self._probe(conn)  # quiet for a while: do notifications still arrive?
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.warning(
                    "OTB todo fast path: notification listener lost; idle cache off", exc_info=True
                )
            finally:
                self.listening = False
                self._forget_all()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, LISTEN_BACKOFF_MAX_S)

    async def _probe(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """Notify ourselves and wait for it to come back: proves the connection is alive and really
        listening (through a transaction-mode pooler, LISTEN "succeeds" and nothing arrives). Other
        notifications that arrive meanwhile are applied. Raises when it does not come back in time."""
        token = f"probe:{uuid.uuid4().hex}"
        deadline = time.monotonic() + LISTEN_PROBE_TIMEOUT_S
        await asyncio.wait_for(
            conn.execute("SELECT pg_notify(%s, %s)", (NOTIFY_CHANNEL, token)), timeout=LISTEN_PROBE_TIMEOUT_S
        )
        while (left := deadline - time.monotonic()) > 0:
            async for notify in conn.notifies(timeout=left):
                if notify.payload == token:
                    return
                self.invalidate(notify.payload)
        raise RuntimeError("the listener's own notification did not come back: nothing is delivered")

    async def _ensure_loop_state(self) -> None:
        loop = asyncio.get_running_loop()
        if self._pool is not None and self._loop is loop:
            return
        # autocommit: one round trip per poll (otherwise BEGIN before it and the pool's ROLLBACK after)
        pool = AsyncConnectionPool(
            # the process id in the name: pg_stat_activity tells which web process holds what
            kwargs={**conninfo_from_settings(role=f"otb-todo:{os.getpid()}"), "autocommit": True},
            min_size=1,
            max_size=self.pool_size,
            open=False,
            name="otb-todo",
        )
        await pool.open(wait=False)
        self._pool, self._loop = pool, loop
        self._redis = aioredis.Redis.from_url(settings.REDIS_URL)
        self._writer = loop.create_task(self._write_presence())
        self._body = wait_body()
        self._start, self._end = self._messages(self._body)
        self._cache_s = idle_cache_s()
        self._forget_all()
        if self._cache_s > 0:
            self._listener = loop.create_task(self._listen())

    async def _write_presence(self) -> None:
        """Once a second: the polls answered here since the last write, in one HSET."""
        while True:
            await asyncio.sleep(PRESENCE_WRITE_INTERVAL_S)
            await self.presence_write()

    async def presence_write(self) -> None:
        if not self._seen or self._redis is None:
            return
        seen, self._seen = self._seen, {}
        try:
            await self._redis.hset(seen_key(), mapping=seen)
        except Exception:  # presence is best effort: the next polls note the boxes again
            logger.warning("OTB presence write failed for %d devices", len(seen), exc_info=True)

    @staticmethod
    def _messages(body: bytes) -> tuple[dict[str, Any], dict[str, Any]]:
        """The two ASGI messages of the ``wait`` answer, built once."""
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"x-content-type-options", b"nosniff"),
        ]
        return (
            {"type": "http.response.start", "status": 200, "headers": headers},
            {"type": "http.response.body", "body": body},
        )

    async def close(self) -> None:
        """Write what is noted and close the pool, then the wrapped application's (tests end their
        event loop)."""
        await self.presence_write()
        for task in (self._writer, self._listener):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        self._writer = self._listener = None
        self.listening = False
        self._forget_all()
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close()
        if self._redis is not None:
            redis, self._redis = self._redis, None
            await redis.aclose()
        inner_close = getattr(self.app, "close", None)
        if inner_close is not None:
            await inner_close()
