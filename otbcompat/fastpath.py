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
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, cast

import psycopg
import redis.asyncio as aioredis
from django.conf import settings
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from fleet.core.live_connections import conninfo_from_settings
from otbcompat.jwt import JwtExpired, JwtInvalid, jwt_decode
from otbcompat.models import OtbDevice
from otbcompat.presence import clean_version, seen_key, seen_value

logger = logging.getLogger(__name__)

TODO_PATH = re.compile(r"^/1\.0/devices/([0-9a-fA-F-]{36})/actions/todo$")
PRESENCE_WRITE_INTERVAL_S = 1.0
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

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


def wait_body() -> bytes:
    delay = int(cast(dict[str, Any], settings.OTB)["OTB_COMPAT_POLL_DELAY_S"])
    return b'{"id": null, "action": "wait", "arguments": {"delay": %d}}' % delay


class OtbTodoFastPath:
    """Wraps the HTTP application; see the module docstring for what it answers itself."""

    def __init__(self, app: Any, *, pool_size: int = 4) -> None:
        self.app = app
        self.pool_size = pool_size
        self._pool: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._redis: Any = None
        self._seen: dict[str, str] = {}
        self._writer: asyncio.Task[None] | None = None
        self._body = wait_body()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "GET":
            match = TODO_PATH.match(scope["path"])
            if match is not None and await self._idle(scope, match.group(1)):
                await self._wait(send)
                return
        await self.app(scope, receive, send)

    async def _idle(self, scope: Scope, path_id: str) -> bool:
        authorization = version = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                authorization = value.decode("latin-1")
            elif name == b"x-overthebox-version":
                version = value.decode("latin-1")
        if not authorization or not authorization.startswith("Bearer "):
            return False
        try:
            claims = jwt_decode(authorization[7:].strip(), settings.OTB_COMPAT_JWT_KEYS, now=time.time())
            device_id = uuid.UUID(str(claims.get("sub")))
            if device_id != uuid.UUID(path_id):
                return False
        except (JwtInvalid, JwtExpired, ValueError):
            return False
        try:
            await self._ensure_loop_state()
            async with self._pool.connection(timeout=2.0) as conn:
                cursor = await conn.execute(_QUERY, (device_id,), prepare=True)
                row = await cursor.fetchone()
        except (PoolTimeout, psycopg.OperationalError):
            # The database is saturated or down: Django would fail the same way, and a box that gets an
            # error polls again within a second. A box whose JWT we signed is paced instead (``wait``
            # tells nothing and does nothing; a command waits one more delay); not noted as seen.
            logger.warning("OTB todo fast path: database unavailable; pacing the box", exc_info=True)
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
        self._seen[str(device_id)] = seen_value(box_id=box_id, version=clean_version(version), at=time.time())
        return True

    async def _ensure_loop_state(self) -> None:
        loop = asyncio.get_running_loop()
        if self._pool is not None and self._loop is loop:
            return
        # autocommit: one round trip per poll (otherwise BEGIN before it and the pool's ROLLBACK after)
        pool = AsyncConnectionPool(
            kwargs={**conninfo_from_settings(role="otb-todo"), "autocommit": True},
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

    async def _wait(self, send: Send) -> None:
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(self._body)).encode()),
            (b"x-content-type-options", b"nosniff"),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": self._body})

    async def close(self) -> None:
        """Write what is noted and close the pool, then the wrapped application's (tests end their
        event loop)."""
        await self.presence_write()
        if self._writer is not None:
            self._writer.cancel()
            self._writer = None
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close()
        if self._redis is not None:
            redis, self._redis = self._redis, None
            await redis.aclose()
        inner_close = getattr(self.app, "close", None)
        if inner_close is not None:
            await inner_close()
