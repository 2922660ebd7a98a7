"""The protocol's JSON schema (``protocol_schema.json``) and its compiler.

The schema is a small subset of JSON Schema 2020-12. It is compiled once, at import, into nested
closures, so validating a telemetry frame costs a few microseconds. A check raises
:class:`Violation` with the path to the offending value (built while the exception unwinds);
:mod:`otb_protocol.frames` turns it into a :class:`~otb_protocol.frames.ProtocolError`.

Strictness: ``bool`` is not an ``integer``/``number``; NaN and infinities are rejected; unknown
fields are rejected unless the schema is compiled ``lenient`` (see the versioning policy in
docs/agent-protocol.md). Two keywords of our own, on an object whose content is free form (a command's
``params``, a result's ``output``): ``x-number-bounds`` (``{"minimum", "maximum"}``) bounds every number
in it, at any depth, so that no number of a frame is unbounded; ``x-max-depth`` bounds how deep objects
and arrays nest in it (what the parsers, PostgreSQL's jsonb and recursive code all take).
"""

from __future__ import annotations

import json
import math
import os
import re
from typing import Any, Callable, Dict, FrozenSet, List, Optional, Set

SCHEMA_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "protocol_schema.json")

Check = Callable[[Any], None]

_KEYWORDS = frozenset(
    {
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
        "x-number-bounds",
        "x-max-depth",
    }
)
_PYTHON_TYPES: Dict[str, FrozenSet[type]] = {
    "string": frozenset({str}),
    "integer": frozenset({int}),
    "number": frozenset({int, float}),
    "boolean": frozenset({bool}),
    "object": frozenset({dict}),
    "array": frozenset({list}),
}

_isfinite = math.isfinite


class Violation(Exception):
    """A value does not match the schema; ``parts`` is the path to it, innermost first."""

    __slots__ = ("msg", "parts")

    def __init__(self, msg: str, parts: Optional[List[Any]] = None) -> None:
        self.msg = msg
        self.parts = parts if parts is not None else []

    def path(self) -> str:
        """The path as ``samples[0].wans[2].rtt_ms`` (empty for the frame itself)."""
        out = ""
        for p in reversed(self.parts):
            if isinstance(p, int):
                out += f"[{p}]"
            else:
                out = f"{out}.{p}" if out else str(p)
        return out


def load_schema() -> Dict[str, Any]:
    """The protocol JSON schema shipped as package data."""
    with open(SCHEMA_FILE, encoding="utf-8") as f:
        schema: Dict[str, Any] = json.load(f)
    return schema


def _type_check(types: List[str]) -> Check:
    """Return a closure checking the JSON type(s); bool never counts as integer/number."""
    allow_null = "null" in types
    ts = [t for t in types if t != "null"]
    names = "/".join(types)

    if ts == ["string"]:

        def check(v: Any) -> None:
            if type(v) is not str and not (allow_null and v is None):
                raise Violation(f"expected {names}")

    elif ts == ["integer"]:

        def check(v: Any) -> None:
            if type(v) is not int and not (allow_null and v is None):
                raise Violation(f"expected {names}")

    elif ts == ["number"]:

        def check(v: Any) -> None:
            tv = type(v)
            if tv is float:
                if not _isfinite(v):
                    raise Violation("number must be finite")
            elif tv is not int and not (allow_null and v is None):
                raise Violation(f"expected {names}")

    else:
        pytypes: Set[type] = set()
        for t in ts:
            pytypes |= _PYTHON_TYPES[t]
        if allow_null:
            pytypes.add(type(None))
        frozen = frozenset(pytypes)

        def check(v: Any) -> None:
            tv = type(v)
            if tv not in frozen:
                raise Violation(f"expected {names}")
            if tv is float and not _isfinite(v):
                raise Violation("number must be finite")

    return check


def _size_check(low: Optional[int], high: Optional[int], verb: str, unit: str) -> Callable[[int], None]:
    """A check of a string's length or an array's item count: ``must <verb> at least <low> <unit>``."""

    def check(n: int) -> None:
        if low is not None and n < low:
            raise Violation(f"must {verb} at least {low} {unit}")
        if high is not None and n > high:
            raise Violation(f"must {verb} at most {high} {unit}")

    return check


def _free_form_check(bounds: Dict[str, Any], max_depth: Optional[int]) -> Check:
    """A check that every number inside a free-form value (at any depth) is finite and within
    ``bounds``, and that its objects and arrays nest at most ``max_depth`` deep; walked without
    recursion, so any nesting the parser accepted is checked."""
    low = bounds.get("minimum", -math.inf)
    high = bounds.get("maximum", math.inf)

    def check(v: Any) -> None:
        if type(v) is not dict and type(v) is not list:
            return
        stack: List[Any] = [(v, ())]
        while stack:
            value, path = stack.pop()
            tv = type(value)
            if (tv is dict or tv is list) and max_depth is not None and len(path) >= max_depth:
                raise Violation(f"must nest at most {max_depth} levels deep", list(reversed(path)))
            if tv is dict:
                stack.extend((x, (*path, k)) for k, x in value.items())
            elif tv is list:
                stack.extend((x, (*path, i)) for i, x in enumerate(value))
            elif tv is int or tv is float:
                problem = None
                if tv is float and not _isfinite(value):
                    problem = "number must be finite"
                elif value < low:
                    problem = f"must be >= {low}"
                elif value > high:
                    problem = f"must be <= {high}"
                if problem is not None:
                    raise Violation(problem, list(reversed(path)))

    return check


def _noop(v: Any) -> None:
    return None


def compile_schema(schema: Dict[str, Any], lenient: bool) -> Check:
    """Compile one schema node into a check; ``lenient`` ignores unknown object fields."""
    unknown = set(schema) - _KEYWORDS
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
                raise Violation(f"must be {json.dumps(const)}")

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
                        raise Violation("number must be finite")
                elif v is None and allow_null:
                    return
                else:
                    raise Violation("expected " + "/".join(types))
                if mn is not None and v < mn:
                    raise Violation(f"must be >= {mn}")
                if mx is not None and v > mx:
                    raise Violation(f"must be <= {mx}")

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
                raise Violation("must be one of " + ", ".join(json.dumps(x) for x in values))

        checks.append(check_enum)

    mn = schema.get("minimum")
    mx = schema.get("maximum")
    if mn is not None or mx is not None:

        def check_range(v: Any) -> None:
            tv = type(v)
            if tv is int or tv is float:
                if mn is not None and v < mn:
                    raise Violation(f"must be >= {mn}")
                if mx is not None and v > mx:
                    raise Violation(f"must be <= {mx}")

        checks.append(check_range)

    min_len = schema.get("minLength")
    max_len = schema.get("maxLength")
    pattern = schema.get("pattern")
    if min_len is not None or max_len is not None or pattern is not None:
        length_check = _size_check(min_len, max_len, "be", "characters")
        rx = re.compile(pattern) if pattern is not None else None

        def check_str(v: Any) -> None:
            if type(v) is not str:
                return
            length_check(len(v))
            if rx is not None and rx.search(v) is None:
                raise Violation(f"must match {pattern}")

        checks.append(check_str)

    if "items" in schema or "minItems" in schema or "maxItems" in schema:
        item_check = compile_schema(schema["items"], lenient) if "items" in schema else _noop
        count_check = _size_check(schema.get("minItems"), schema.get("maxItems"), "have", "items")

        def check_array(v: Any) -> None:
            if type(v) is not list:
                return
            count_check(len(v))
            if item_check is _noop:
                return
            i = 0
            try:
                for i, x in enumerate(v):  # noqa: B007
                    item_check(x)
            except Violation as e:
                e.parts.append(i)
                raise

        checks.append(check_array)

    if "x-number-bounds" in schema or "x-max-depth" in schema:
        checks.append(_free_form_check(schema.get("x-number-bounds", {}), schema.get("x-max-depth")))

    if "properties" in schema or "required" in schema or "additionalProperties" in schema:
        props = {k: compile_schema(s, lenient) for k, s in schema.get("properties", {}).items()}
        required = tuple(schema.get("required", ()))
        closed = schema.get("additionalProperties", True) is False and not lenient
        props_get = props.get

        def check_object(v: Any) -> None:
            if type(v) is not dict:
                return
            for k in required:
                if k not in v:
                    raise Violation("missing required field", [k])
            k = None
            try:
                for k, x in v.items():
                    c = props_get(k)
                    if c is None:
                        if closed:
                            raise Violation("unknown field")
                        continue
                    c(x)
            except Violation as e:
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
