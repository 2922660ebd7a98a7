"""Small helpers: state dir files with safe modes, JSON logging, status.json."""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from typing import Any, Dict, List, Optional, TextIO

DEFAULT_STATE_DIR = "/var/lib/otb-agent"
CREDENTIALS_FILE = "credentials.json"
CONFIG_FILE = "config.json"
STATUS_FILE = "status.json"
DB_FILE = "agent.db"
PRIVATE_KEY_FILE = "wg_private_key"
PUBLIC_KEY_FILE = "wg_public_key"

_LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40}


def default_state_dir() -> str:
    return os.environ.get("OTB_AGENT_STATE_DIR") or DEFAULT_STATE_DIR


def ensure_dir(path: str, mode: int = 0o700) -> None:
    os.makedirs(path, mode=mode, exist_ok=True)
    with contextlib.suppress(OSError):
        os.chmod(path, mode)


def write_file_atomic(path: str, data: str, mode: int = 0o600) -> None:
    """Write via a temp file + rename; the file never exists with a looser mode."""
    tmp = f"{path}.tmp.{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_json(path: str, obj: Any, mode: int = 0o600) -> None:
    write_file_atomic(path, json.dumps(obj, indent=2, sort_keys=True) + "\n", mode)


def read_json(path: str) -> Optional[Any]:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        return None


def read_text(path: str, default: Optional[str] = None) -> Optional[str]:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return default


class Logger:
    """Structured logs: one JSON object per line ({ts, level, event, fields})."""

    def __init__(self, stream: Optional[TextIO] = None, level: str = "info", **context: Any) -> None:
        self.stream = stream
        self.threshold = _LEVELS.get(level, 20)
        self.context = context

    def bind(self, **context: Any) -> "Logger":
        child = Logger(self.stream, "info", **{**self.context, **context})
        child.threshold = self.threshold
        return child

    def log(self, level: str, event: str, **fields: Any) -> None:
        if _LEVELS.get(level, 20) < self.threshold:
            return
        if self.context:
            fields = {**self.context, **fields}
        line = json.dumps(
            {
                "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
                + f".{int(time.time() * 1000) % 1000:03d}Z",
                "level": level,
                "event": event,
                "fields": fields,
            },
            default=str,
            separators=(",", ":"),
        )
        stream = self.stream or sys.stderr
        try:
            stream.write(line + "\n")
            stream.flush()
        except (OSError, ValueError):
            pass

    def debug(self, event: str, **fields: Any) -> None:
        if self.threshold <= 10:
            self.log("debug", event, **fields)

    def info(self, event: str, **fields: Any) -> None:
        self.log("info", event, **fields)

    def warning(self, event: str, **fields: Any) -> None:
        self.log("warning", event, **fields)

    def error(self, event: str, **fields: Any) -> None:
        self.log("error", event, **fields)


class Status:
    """Session status; written to status.json (0644) when it changes (rate limited)."""

    MAX_ERRORS = 10

    def __init__(self, path: Optional[str]) -> None:
        self.path = path
        self.data: Dict[str, Any] = {
            "state": "starting",
            "session_id": None,
            "last_acked_seq": 0,
            "buffer_depth": 0,
            "dropped_total": 0,
            "dropped_unreported": 0,
            "applied_config_hash": None,
            "connected_since": None,
            "last_errors": [],
            "pid": os.getpid(),
            "updated_at": None,
        }
        self._dirty = False
        self._last_write = 0.0

    def set(self, **fields: Any) -> None:
        for k, v in fields.items():
            if self.data.get(k) != v:
                self.data[k] = v
                self._dirty = True

    def error(self, event: str, message: str) -> None:
        errs: List[Dict[str, Any]] = self.data["last_errors"]
        errs.append({"ts": time.time(), "event": event, "message": message[:500]})
        del errs[: -self.MAX_ERRORS]
        self._dirty = True

    def flush(self, force: bool = False, min_interval: float = 2.0) -> None:
        if self.path is None or not self._dirty:
            return
        now = time.time()
        if not force and now - self._last_write < min_interval:
            return
        self.data["updated_at"] = now
        try:
            write_json(self.path, self.data, mode=0o644)
        except OSError:
            return
        self._dirty = False
        self._last_write = now
