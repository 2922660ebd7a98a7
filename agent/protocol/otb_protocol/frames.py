"""Frames of protocol v1: version, size limit, close codes, and the validating encode/decode.

The server validates every incoming frame with :func:`validate_message` (strict: unknown fields
rejected); the agent decodes server frames with ``ignore_unknown_fields=True``, since a newer server
may add optional fields (see the versioning policy in docs/agent-protocol.md).
"""

from __future__ import annotations

import json
from typing import Any, Dict, List, NoReturn, Tuple

from .schema import Check, Violation, compile_schema, load_schema

PROTOCOL_VERSION = 1
MAX_FRAME_BYTES = 65536

# Websocket close codes used by the protocol.
CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_TOO_BIG = 1009
CLOSE_SERVICE_RESTART = 1012
# The server could not store telemetry (its database is unavailable): the agent reconnects after the
# preceding error frame's retry_after_s and resends everything not acked.
CLOSE_TRY_AGAIN_LATER = 1013
CLOSE_UNAUTHORIZED = 4001
CLOSE_REPLACED = 4002
CLOSE_INVALID_FRAMES = 4003
CLOSE_RATE_LIMITED = 4029
# A hello in a protocol version the server does not speak (the standard "policy violation").
CLOSE_UNSUPPORTED_VERSION = 1008

CLOSE_CODE_NAMES = {
    CLOSE_NORMAL: "normal",
    CLOSE_GOING_AWAY: "going_away",
    CLOSE_TOO_BIG: "message_too_big",
    CLOSE_SERVICE_RESTART: "service_restart",
    CLOSE_TRY_AGAIN_LATER: "try_again_later",
    CLOSE_UNAUTHORIZED: "unauthorized",
    CLOSE_REPLACED: "replaced",
    CLOSE_INVALID_FRAMES: "too_many_invalid_frames",
    CLOSE_RATE_LIMITED: "rate_limited",
    CLOSE_UNSUPPORTED_VERSION: "unsupported_version",
}

# The codes of the error frames a server sends, and what each means (docs/agent-protocol.md, "error").
ERROR_CODES = {
    "invalid_frame": "the frame is not standard JSON, breaks the schema (field names the value) or names "
    "a key twice (field names the key); counts toward close 4003",
    "unknown_type": "a type this version does not have, or one agents do not send (field type); counts "
    "toward close 4003",
    "hello_required": "a frame other than hello or heartbeat before the hello (field type); counts toward "
    "close 4003",
    "unsupported_version": "the hello's protocol version is not spoken here (field v); close 1008",
    "unauthorized": "the token is unknown or revoked; close 4001",
    "rate_limited": "a reconnect during the penalty that follows close 4003 (retry_after_s); close 4029",
    "overloaded": "the server process has too many sessions (retry_after_s); close 4029",
    "unavailable": "the server cannot serve the session now: at connect (retry_after_s, close 4029), or a "
    "hello or a command update that failed (send it again)",
    "storage_unavailable": "the telemetry seq was not stored and is not acked; resend it after retry_after_s",
    "rejected": "the telemetry seq can never be stored (field samples); it is not acked",
    "replaced": "a newer session of the box replaced this one; close 4002",
    "not_found": "a command_progress or command_result for a command this box does not have (field id)",
    "invalid": "a command update the server refuses (field names the value)",
    "conflict": "a command update the command's state forbids (field state)",
}

AGENT_TO_SERVER = frozenset(
    {"hello", "telemetry", "heartbeat", "command_progress", "command_result", "error"}
)
SERVER_TO_AGENT = frozenset({"welcome", "ack", "heartbeat", "config_changed", "command", "error"})


class ProtocolError(ValueError):
    """A frame does not conform to the protocol.

    ``field_path`` locates the offending value, e.g. ``samples[0].wans[2].rtt_ms``
    (empty string for the frame itself).
    """

    def __init__(self, message: str, field_path: str = "") -> None:
        super().__init__(f"{field_path}: {message}" if field_path else message)
        self.message = message
        self.field_path = field_path


class UnknownMessageType(ProtocolError):
    """The ``type`` is not part of this protocol version (a newer peer may send it)."""


SCHEMA = load_schema()
MESSAGE_TYPES = tuple(SCHEMA["$defs"])
_STRICT: Dict[str, Check] = {t: compile_schema(s, False) for t, s in SCHEMA["$defs"].items()}
_LENIENT: Dict[str, Check] = {t: compile_schema(s, True) for t, s in SCHEMA["$defs"].items()}


def validate_message(obj: Any, *, ignore_unknown_fields: bool = False) -> None:
    """Validate one decoded frame; raise :class:`ProtocolError` (with ``field_path``).

    Raises :class:`UnknownMessageType` (a ProtocolError) for a ``type`` not in this version.
    """
    if type(obj) is not dict:
        raise ProtocolError("frame must be a JSON object")
    t = obj.get("type")
    if type(t) is not str:
        raise ProtocolError("missing or non-string type", "type")
    table = _LENIENT if ignore_unknown_fields else _STRICT
    check = table.get(t)
    if check is None:
        raise UnknownMessageType(f"unknown message type {t[:64]!r}", "type")
    try:
        check(obj)
    except Violation as e:
        raise ProtocolError(e.msg, e.path()) from None


def _reject_constant(name: str) -> NoReturn:
    raise ProtocolError(f"{name} is not allowed")


class _RepeatedKey(dict):
    """A decoded object in which ``key`` appeared more than once (only ever seen by
    :func:`_parse`, which refuses the frame)."""

    key = ""


def _repeated_key(obj: Any) -> Tuple[str, str]:
    """The first repeated key in ``obj`` (in document order) and its path."""
    stack: List[Tuple[Any, Tuple[Any, ...]]] = [(obj, ())]
    while stack:
        value, parts = stack.pop()
        if isinstance(value, _RepeatedKey):
            return value.key, Violation("", list(reversed((*parts, value.key)))).path()
        if isinstance(value, dict):
            stack.extend((x, (*parts, k)) for k, x in reversed(list(value.items())))
        elif isinstance(value, list):
            stack.extend((x, (*parts, i)) for i, x in reversed(list(enumerate(value))))
    return "", ""


def _parse(text: str) -> Any:
    """``json.loads`` of a frame's text: standard JSON only (no NaN or Infinity), and a key at most
    once per object; a repeated key raises :class:`ProtocolError` naming it."""
    repeated: List[_RepeatedKey] = []

    def object_of(pairs: List[Tuple[str, Any]]) -> Dict[str, Any]:
        obj = dict(pairs)
        if len(obj) == len(pairs):
            return obj
        marked = _RepeatedKey(obj)
        seen = set()
        for key, _ in pairs:
            if key in seen:
                marked.key = key
                break
            seen.add(key)
        repeated.append(marked)
        return marked

    try:
        obj = json.loads(text, parse_constant=_reject_constant, object_pairs_hook=object_of)
    except ProtocolError:
        raise
    except ValueError as e:
        raise ProtocolError(f"invalid JSON: {e}") from None
    except RecursionError:
        raise ProtocolError("invalid JSON: nested too deeply") from None
    if repeated:
        key, path = _repeated_key(obj)
        raise ProtocolError(f"duplicate key {key!r}: a key may appear once per object", path)
    return obj


def check_unique_keys(text: str) -> None:
    """Raise :class:`ProtocolError` naming the key (``samples[0].wans[1].rtt_ms``) if an object of the
    frame ``text`` names a key twice: such a frame is ambiguous (parsers disagree on which value wins),
    so both sides refuse it. Also raises for text that is not standard JSON."""
    _parse(text)


def decode(data: Any, *, validate: bool = True, ignore_unknown_fields: bool = False) -> Dict[str, Any]:
    """Parse one text frame (str or UTF-8 bytes; a repeated key is refused) and validate it."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        if len(data) > MAX_FRAME_BYTES:
            raise ProtocolError("frame too big")
        try:
            data = bytes(data).decode("utf-8")
        except UnicodeDecodeError:
            raise ProtocolError("frame is not valid UTF-8") from None
    elif not isinstance(data, str):
        raise ProtocolError("frame must be text")
    if len(data) > MAX_FRAME_BYTES:
        raise ProtocolError("frame too big")
    obj = _parse(data)
    if validate:
        validate_message(obj, ignore_unknown_fields=ignore_unknown_fields)
    return obj


_dumps = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode


def encode(obj: Dict[str, Any], *, validate: bool = True) -> str:
    """Serialise one message to a compact JSON text frame (validated unless told not to)."""
    if validate:
        validate_message(obj)
    try:
        text = _dumps(obj)
    except ValueError as e:  # NaN/inf
        raise ProtocolError(str(e)) from None
    if len(text) > MAX_FRAME_BYTES or len(text.encode("utf-8")) > MAX_FRAME_BYTES:
        raise ProtocolError("frame too big")
    return text
