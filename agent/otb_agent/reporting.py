"""Where the parts of an agent report what happens: counters, the JSON log, ``status.json``."""

from __future__ import annotations

from typing import Any, Optional

from .util import Logger, Status


class Stats:
    """Counters shared by all simulated boxes (or owned by a single agent)."""

    __slots__ = ("acked", "commands", "connected", "errors", "sent", "sessions", "stopped", "unauthorized")

    def __init__(self) -> None:
        self.connected = 0
        self.sent = 0
        self.acked = 0
        self.errors = 0
        self.sessions = 0
        self.stopped = 0
        self.unauthorized = 0
        self.commands = 0


class Reporter:
    """One box's log, its ``status.json`` (None for simulated boxes: no file) and the counters."""

    def __init__(self, log: Logger, status: Optional[Status], stats: Stats) -> None:
        self.log = log
        self.status = status
        self.stats = stats

    def error(self, event: str, message: str, level: str = "warning", **fields: Any) -> None:
        """Count, log and remember (``status.json``'s ``last_errors``) something that went wrong."""
        self.stats.errors += 1
        self.log.log(level, event, message=message, **fields)
        if self.status is not None:
            self.status.error(event, message)
            self.status.flush()

    def status_update(self, *, force: bool = False, **fields: Any) -> None:
        """Set fields of ``status.json`` and write it (at most every 2 s unless ``force``)."""
        if self.status is not None:
            self.status.set(**fields)
            self.status.flush(force=force)
