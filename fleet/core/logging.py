"""Structured logs: one JSON object per line with the request id when there is one.

No line carries a credential that travels in a URL. The download addresses handed to stock
OverTheBox boxes (their restore archive, their sysupgrade image and its ``.sig``: ``otbcompat.downloads``
and ``otbcompat.backup_views``) are fetched with plain curl, so the token is a path segment: it is
replaced by ``[redacted]`` wherever a path is logged (the request log, Django's request errors, every
JSON line, uvicorn's access log); a query string is never logged at all.
"""

from __future__ import annotations

import json
import logging
import re
from datetime import UTC, datetime

from fleet.core.request_context import current_request_id

_STANDARD_ATTRS = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}

# The routes whose next path segment is a credential (``/1.0/backup_archives/<token>``,
# ``/1.0/firmware/<token>/<file>``); a route added with a token in its path belongs here. (A route
# pattern, ``<str:token>``, is left as it is.)
SECRET_SEGMENT = re.compile(r"(/1\.0/(?:backup_archives|firmware)/)[^/?#\s\"'\\<]+")
REDACTED = "[redacted]"


def secrets_redact(text: str) -> str:
    """``text`` with the token of every download address in it replaced by ``[redacted]``."""
    return SECRET_SEGMENT.sub(rf"\g<1>{REDACTED}", text) if "/1.0/" in text else text


def path_for_log(path: str) -> str:
    """A request path (with or without its query string) as it may be logged: its token redacted and
    its query string cut (tokens travel there too)."""
    path, query_sep, _ = path.partition("?")
    return secrets_redact(path) + (f"?{REDACTED}" if query_sep else "")


class AccessLogRedactFilter(logging.Filter):
    """For loggers whose records carry the request path among their arguments (uvicorn's access log:
    ``'%s - "%s %s HTTP/%s" %d'``, the path with its query string): each argument that is a path goes
    through :func:`path_for_log`. Installed on ``uvicorn.access`` by ``fleet.core.apps``."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and record.args:
            record.args = tuple(
                path_for_log(arg) if isinstance(arg, str) and arg.startswith("/") else arg
                for arg in record.args
            )
        return True


class RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, "request_id", None):
            record.request_id = current_request_id()
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD_ATTRS and not key.startswith("_") and value not in ("", None):
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        # Whatever a line holds (a message naming the path, Django's ``request`` attribute on its
        # request errors), no download token leaves in it.
        return secrets_redact(json.dumps(entry, default=str))
