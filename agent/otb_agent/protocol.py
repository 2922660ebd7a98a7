"""Wire protocol v1 between otb-agent and the fleet server.

Stdlib only: the server imports this module too and validates every incoming frame with
:func:`validate_message`. The JSON schema (``protocol_schema.json``, a small subset of
JSON Schema 2020-12) is compiled once at import into nested closures, so validating a
telemetry frame costs a few microseconds.

Strictness: ``bool`` is not an ``int``/``number``; NaN and infinities are rejected; unknown
fields are rejected unless ``ignore_unknown_fields=True`` (the agent uses that for frames
coming from a possibly newer server, see the versioning policy in docs/agent-protocol.md).
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, Callable, Dict, List, Optional

PROTOCOL_VERSION = 1
MAX_FRAME_BYTES = 65536

# Websocket close codes used by the protocol.
CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_TOO_BIG = 1009
CLOSE_SERVICE_RESTART = 1012
CLOSE_UNAUTHORIZED = 4001
CLOSE_REPLACED = 4002
CLOSE_INVALID_FRAMES = 4003
CLOSE_RATE_LIMITED = 4029

CLOSE_CODE_NAMES = {
    CLOSE_NORMAL: "normal",
    CLOSE_GOING_AWAY: "going_away",
    CLOSE_TOO_BIG: "message_too_big",
    CLOSE_SERVICE_RESTART: "service_restart",
    CLOSE_UNAUTHORIZED: "unauthorized",
    CLOSE_REPLACED: "replaced",
    CLOSE_INVALID_FRAMES: "too_many_invalid_frames",
    CLOSE_RATE_LIMITED: "rate_limited",
}

AGENT_TO_SERVER = frozenset(
    {"hello", "telemetry", "heartbeat", "command_progress", "command_result", "error"}
)
SERVER_TO_AGENT = frozenset({"welcome", "ack", "heartbeat", "config_changed", "command", "error"})

COMMAND_KINDS = (
    "reboot",
    "restart_services",
    "diagnostics",
    "speed_test",
    "refresh_config",
    "firmware_upgrade",
)
WAN_KINDS = ("fiber", "vdsl", "adsl", "sdsl", "cable", "lte", "5g", "satellite", "other")


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


class _Fail(Exception):
    __slots__ = ("msg", "parts")

    def __init__(self, msg: str, parts: Optional[List[Any]] = None) -> None:
        self.msg = msg
        self.parts = parts if parts is not None else []


def _join_path(parts: List[Any]) -> str:
    out = ""
    for p in reversed(parts):
        if isinstance(p, int):
            out += f"[{p}]"
        else:
            out = f"{out}.{p}" if out else str(p)
    return out


# --------------------------------------------------------------------------- compiler

Check = Callable[[Any], None]

_isfinite = math.isfinite


def _type_check(types: List[str]) -> Check:
    """Return a closure checking the JSON type(s); bool never counts as integer/number."""
    allow_null = "null" in types
    ts = [t for t in types if t != "null"]
    names = "/".join(types)

    if ts == ["string"]:

        def check(v: Any) -> None:
            if type(v) is not str and not (allow_null and v is None):
                raise _Fail(f"expected {names}")

    elif ts == ["integer"]:

        def check(v: Any) -> None:
            if type(v) is not int and not (allow_null and v is None):
                raise _Fail(f"expected {names}")

    elif ts == ["number"]:

        def check(v: Any) -> None:
            tv = type(v)
            if tv is float:
                if not _isfinite(v):
                    raise _Fail("number must be finite")
            elif tv is not int and not (allow_null and v is None):
                raise _Fail(f"expected {names}")

    else:
        pytypes: set = set()
        for t in ts:
            pytypes |= {
                "string": {str},
                "integer": {int},
                "number": {int, float},
                "boolean": {bool},
                "object": {dict},
                "array": {list},
            }[t]
        if allow_null:
            pytypes.add(type(None))
        frozen = frozenset(pytypes)

        def check(v: Any) -> None:
            tv = type(v)
            if tv not in frozen:
                raise _Fail(f"expected {names}")
            if tv is float and not _isfinite(v):
                raise _Fail("number must be finite")

    return check


def _noop(v: Any) -> None:
    return None


def _compile(schema: Dict[str, Any], lenient: bool) -> Check:
    known = {
        "type",
        "properties",
        "required",
        "additionalProperties",
        "enum",
        "minimum",
        "maximum",
        "maxLength",
        "minLength",
        "items",
        "minItems",
        "maxItems",
        "const",
        "pattern",
        "description",
    }
    unknown = set(schema) - known
    if unknown:
        raise ValueError(f"unsupported schema keywords: {sorted(unknown)}")

    stype = schema.get("type")
    types: List[str] = [stype] if isinstance(stype, str) else list(stype or [])
    checks: List[Check] = []

    if "const" in schema:
        const = schema["const"]
        ctype = type(const)

        def check_const(v: Any) -> None:
            if type(v) is not ctype or v != const:
                raise _Fail(f"must be {json.dumps(const)}")

        checks.append(check_const)

    # Fully specialised fast paths for the common leaf shapes.
    if types and set(types) <= {"integer", "number", "null"} and len(schema.keys() - {"description"}) <= 3:
        mn = schema.get("minimum")
        mx = schema.get("maximum")
        allow_null = "null" in types
        int_only = "number" not in types
        if set(schema) - {"type", "minimum", "maximum", "description"} == set():

            def check_num(v: Any) -> None:
                tv = type(v)
                if tv is int:
                    pass
                elif tv is float and not int_only:
                    if not _isfinite(v):
                        raise _Fail("number must be finite")
                elif v is None and allow_null:
                    return
                else:
                    raise _Fail("expected " + "/".join(types))
                if mn is not None and v < mn:
                    raise _Fail(f"must be >= {mn}")
                if mx is not None and v > mx:
                    raise _Fail(f"must be <= {mx}")

            return check_num

    if types:
        checks.append(_type_check(types))

    if "enum" in schema:
        values = list(schema["enum"])
        allowed = frozenset((type(x), x) for x in values)

        def check_enum(v: Any) -> None:
            if v is None and "null" in types:
                return
            try:
                ok = (type(v), v) in allowed
            except TypeError:
                ok = False
            if not ok:
                raise _Fail("must be one of " + ", ".join(json.dumps(x) for x in values))

        checks.append(check_enum)

    mn = schema.get("minimum")
    mx = schema.get("maximum")
    if mn is not None or mx is not None:

        def check_range(v: Any) -> None:
            tv = type(v)
            if tv is int or tv is float:
                if mn is not None and v < mn:
                    raise _Fail(f"must be >= {mn}")
                if mx is not None and v > mx:
                    raise _Fail(f"must be <= {mx}")

        checks.append(check_range)

    min_len = schema.get("minLength")
    max_len = schema.get("maxLength")
    pattern = schema.get("pattern")
    if min_len is not None or max_len is not None or pattern is not None:
        rx = re.compile(pattern) if pattern is not None else None

        def check_str(v: Any) -> None:
            if type(v) is not str:
                return
            n = len(v)
            if min_len is not None and n < min_len:
                raise _Fail(f"must be at least {min_len} characters")
            if max_len is not None and n > max_len:
                raise _Fail(f"must be at most {max_len} characters")
            if rx is not None and rx.search(v) is None:
                raise _Fail(f"must match {pattern}")

        checks.append(check_str)

    if "items" in schema or "minItems" in schema or "maxItems" in schema:
        item_check = _compile(schema["items"], lenient) if "items" in schema else _noop
        min_items = schema.get("minItems")
        max_items = schema.get("maxItems")

        def check_array(v: Any) -> None:
            if type(v) is not list:
                return
            n = len(v)
            if min_items is not None and n < min_items:
                raise _Fail(f"must have at least {min_items} items")
            if max_items is not None and n > max_items:
                raise _Fail(f"must have at most {max_items} items")
            if item_check is _noop:
                return
            i = 0
            try:
                for i, x in enumerate(v):  # noqa: B007
                    item_check(x)
            except _Fail as e:
                e.parts.append(i)
                raise

        checks.append(check_array)

    if "properties" in schema or "required" in schema or "additionalProperties" in schema:
        props = {k: _compile(s, lenient) for k, s in schema.get("properties", {}).items()}
        required = tuple(schema.get("required", ()))
        closed = schema.get("additionalProperties", True) is False and not lenient
        props_get = props.get

        def check_object(v: Any) -> None:
            if type(v) is not dict:
                return
            for k in required:
                if k not in v:
                    raise _Fail("missing required field", [k])
            k = None
            try:
                for k, x in v.items():
                    c = props_get(k)
                    if c is None:
                        if closed:
                            raise _Fail("unknown field")
                        continue
                    c(x)
            except _Fail as e:
                e.parts.append(k)
                raise

        checks.append(check_object)

    if not checks:
        return _noop
    if len(checks) == 1:
        return checks[0]
    if len(checks) == 2:
        a, b = checks

        def check2(v: Any) -> None:
            a(v)
            b(v)

        return check2
    tup = tuple(checks)

    def check_all(v: Any) -> None:
        for c in tup:
            c(v)

    return check_all


def load_schema() -> Dict[str, Any]:
    """The protocol JSON schema shipped as package data."""
    import os

    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "protocol_schema.json")
    with open(path, encoding="utf-8") as f:
        return json.load(f)


SCHEMA = load_schema()
MESSAGE_TYPES = tuple(SCHEMA["$defs"])
_STRICT: Dict[str, Check] = {t: _compile(s, False) for t, s in SCHEMA["$defs"].items()}
_LENIENT: Dict[str, Check] = {t: _compile(s, True) for t, s in SCHEMA["$defs"].items()}


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
    except _Fail as e:
        raise ProtocolError(e.msg, _join_path(e.parts)) from None


def _reject_constant(name: str) -> Any:
    raise ProtocolError(f"{name} is not allowed")


def decode(data: Any, *, validate: bool = True, ignore_unknown_fields: bool = False) -> Dict[str, Any]:
    """Parse one text frame (str or UTF-8 bytes) and validate it."""
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
    try:
        obj = json.loads(data, parse_constant=_reject_constant)
    except ProtocolError:
        raise
    except ValueError as e:
        raise ProtocolError(f"invalid JSON: {e}") from None
    except RecursionError:
        raise ProtocolError("invalid JSON: nested too deeply") from None
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


__all__ = [
    "CLOSE_CODE_NAMES",
    "CLOSE_GOING_AWAY",
    "CLOSE_INVALID_FRAMES",
    "CLOSE_NORMAL",
    "CLOSE_RATE_LIMITED",
    "CLOSE_REPLACED",
    "CLOSE_SERVICE_RESTART",
    "CLOSE_TOO_BIG",
    "CLOSE_UNAUTHORIZED",
    "COMMAND_KINDS",
    "MAX_FRAME_BYTES",
    "MESSAGE_TYPES",
    "PROTOCOL_VERSION",
    "SCHEMA",
    "WAN_KINDS",
    "ProtocolError",
    "UnknownMessageType",
    "decode",
    "encode",
    "load_schema",
    "validate_message",
]


# Linux's limit on an interface name, with its NUL: command params naming a WAN (``speed_test.iface``)
# are checked with the same rule by the server, when the command is created, and by the agent.
IFNAMSIZ = 16


def interface_name_problem(name: Any) -> Optional[str]:
    """Why ``name`` cannot be a Linux interface name (the kernel's rules), or None if it can be."""
    if not isinstance(name, str) or not name:
        return "must be a network interface name"
    if len(name.encode("utf-8")) >= IFNAMSIZ:
        return f"must be a network interface name of at most {IFNAMSIZ - 1} bytes"
    if name in (".", "..") or any(c in "/:\0" or c.isspace() for c in name):
        return f"is not a valid network interface name: {name!r}"
    return None
