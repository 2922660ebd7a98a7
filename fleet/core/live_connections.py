"""The few psycopg ``AsyncConnection``s an event loop's live paths own: the telemetry writer's and the
session gate's. No Django ORM and no thread hop on these paths: a reconnect storm or a telemetry burst
is thousands of small writes per second, and the ORM's compile step plus the hop to a worker thread
cost more than the statements themselves."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import psycopg
from django.db import connections

logger = logging.getLogger(__name__)

# A connection that broke (server restarted, network cut): the batch on it failed, nothing committed.
DISCONNECTED = (psycopg.OperationalError, psycopg.InterfaceError, OSError)


def conninfo_from_settings(alias: str = "default", role: str = "live") -> dict[str, Any]:
    """psycopg connection keywords for the Django database (also the pytest-django test database)."""
    params = connections[alias].get_connection_params()
    keep = {"dbname", "user", "password", "host", "port", "sslmode", "sslrootcert", "sslcert", "sslkey"}
    kwargs = {key: value for key, value in params.items() if key in keep and value not in (None, "")}
    kwargs["application_name"] = f"{params.get('application_name', 'otb-fleet')}-{role}"
    return kwargs


class LiveConnections:
    """Connections opened on demand, reused while healthy, discarded when broken. ``setup`` runs once
    on each new connection (temp tables, partition checks); a failing setup discards it."""

    def __init__(
        self,
        *,
        role: str,
        conninfo: dict[str, Any] | None = None,
        setup: Callable[[psycopg.AsyncConnection], Awaitable[None]] | None = None,
    ) -> None:
        self.role = role
        self.conninfo = conninfo
        self.setup = setup
        self._idle: list[psycopg.AsyncConnection] = []
        self._open: set[psycopg.AsyncConnection] = set()

    async def acquire(self) -> psycopg.AsyncConnection:
        while self._idle:
            conn = self._idle.pop()
            if not conn.closed:
                return conn
            self._open.discard(conn)
        conninfo = self.conninfo or conninfo_from_settings(role=self.role)
        conn = await psycopg.AsyncConnection.connect(
            **conninfo, connect_timeout=3, options="-c statement_timeout=30000 -c lock_timeout=10000"
        )
        self._open.add(conn)
        if self.setup is not None:
            try:
                await self.setup(conn)
            except BaseException:
                await self.discard(conn)
                raise
        return conn

    def release(self, conn: psycopg.AsyncConnection) -> None:
        if conn.closed:
            self._open.discard(conn)
        else:
            self._idle.append(conn)

    async def discard(self, conn: psycopg.AsyncConnection) -> None:
        self._open.discard(conn)
        try:
            await conn.close()
        except Exception:  # already broken
            logger.debug("closing a %s connection failed", self.role, exc_info=True)

    async def close(self) -> None:
        self._idle.clear()
        for conn in list(self._open):
            await self.discard(conn)
