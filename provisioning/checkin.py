"""The agents' config poll, answered on the event loop when nothing changed.

Every box polls ``GET /api/v1/agent/config`` with ``If-None-Match``; nearly every answer is 304.
Through Django that answer costs a thread hop (Django gives each ASGI request a thread of its own),
the middleware stack and DRF, all to run one indexed query. This ASGI wrapper answers exactly that
case itself: one query on a small async psycopg pool, the same live-credential rule as the API's
authentication (``fleet.core.credentials``: credential not revoked, box not decommissioned), and the
same ETag comparison as the view. Anything else — no or unknown token, no match, an empty hash, the
database not answering — goes to Django unchanged, which remains the one place that builds configs,
reports errors and writes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from psycopg_pool import AsyncConnectionPool

from fleet.core.apis.base import etag_matches
from fleet.core.credentials import agent_credential_join, live_agent_credential_sql
from fleet.core.live_connections import conninfo_from_settings
from fleet.core.request_context import new_request_id
from fleet.core.tokens import TokenKind, digest, token_kind

logger = logging.getLogger(__name__)

CONFIG_PATH = "/api/v1/agent/config"
_QUERY = (
    f"SELECT b.config_hash FROM {agent_credential_join()}"  # noqa: S608 (identifiers from the models)
    f" WHERE c.token_hash = %s AND {live_agent_credential_sql()}"
)

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


class ConfigNotModifiedFastPath:
    """Wraps the HTTP application; see the module docstring for what it answers itself."""

    def __init__(self, app: Any, *, pool_size: int = 4) -> None:
        self.app = app
        self.pool_size = pool_size
        self._pool: Any = None
        self._pool_loop: asyncio.AbstractEventLoop | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "GET" and scope["path"] == CONFIG_PATH:
            config_hash = await self._unchanged_hash(scope)
            if config_hash is not None:
                await self._not_modified(scope, send, config_hash)
                return
        await self.app(scope, receive, send)

    async def _unchanged_hash(self, scope: Scope) -> str | None:
        """The box's config hash when the request may be answered 304 here; None to defer to Django."""
        authorization = if_none_match = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                authorization = value.decode("latin-1")
            elif name == b"if-none-match":
                if_none_match = value.decode("latin-1")
        if not authorization or not if_none_match:
            return None
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or len(token) > 200 or token_kind(token) != TokenKind.AGENT:
            return None
        try:
            pool = await self._get_pool()
            async with pool.connection(timeout=2.0) as conn:
                cursor = await conn.execute(_QUERY, (digest(token),), prepare=True)
                row = await cursor.fetchone()
        except Exception:  # the database is Django's to report; the fast path just steps aside
            logger.warning("config fast path unavailable; deferring to Django", exc_info=True)
            return None
        if row is None or not row[0] or not etag_matches(if_none_match, row[0]):
            return None
        return str(row[0])

    async def close(self) -> None:
        """Close the pool (tests end their event loop; a server process just exits)."""
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close()

    async def _get_pool(self) -> Any:
        loop = asyncio.get_running_loop()
        if self._pool is None or self._pool_loop is not loop:
            # autocommit: one round trip per poll (otherwise BEGIN before the query and the pool's ROLLBACK
            # when the connection comes back), as the OTB todo fast path
            kwargs = {**conninfo_from_settings(role="checkin"), "autocommit": True}
            pool = AsyncConnectionPool(
                kwargs=kwargs, min_size=1, max_size=self.pool_size, open=False, name="otb-checkin"
            )
            await pool.open(wait=False)
            self._pool, self._pool_loop = pool, loop
        return self._pool

    async def _not_modified(self, scope: Scope, send: Send, config_hash: str) -> None:
        incoming = next((v.decode("latin-1") for n, v in scope["headers"] if n == b"x-request-id"), None)
        headers = [
            (b"etag", f'"{config_hash}"'.encode()),
            (b"x-request-id", new_request_id(incoming).encode()),
            (b"x-content-type-options", b"nosniff"),
            (b"content-length", b"0"),
        ]
        await send({"type": "http.response.start", "status": 304, "headers": headers})
        await send({"type": "http.response.body", "body": b""})
