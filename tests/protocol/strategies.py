"""Hypothesis strategies for protocol frames, built from the protocol schema itself
(``otb_protocol.SCHEMA``): valid frames of every message type, and invalid ones made from them by one
mutation (a value of the wrong type or one past a bound, a missing or unknown field, a key named twice,
a literal JSON does not have, text that is not JSON). A field added to the schema is fuzzed without a
test being edited. Lists are kept short so that a frame stays well under the 64 KiB limit."""

from __future__ import annotations

import json
import math
from typing import Any

from hypothesis import strategies as st
from otb_protocol import SCHEMA

from tests.protocol.schema_walk import types_of

MAX_ITEMS = 3  # per array: the budget goes to more frames, not bigger ones
FREE_FORM_BOUNDS = "x-number-bounds"

# Any character the JSON parsers take (no lone surrogates), with the awkward ones drawn often: NUL
# (PostgreSQL text and jsonb refuse it), a colon and a backslash (the server's repeated-key check counts
# colons and looks for escapes), a quote, a line separator.
TEXT = st.characters(exclude_categories=["Cs"]) | st.sampled_from(["\x00", ":", "\\", '"', "\u2028"])


def _number(node: dict[str, Any], integer: bool) -> st.SearchStrategy[Any]:
    low, high = node.get("minimum"), node.get("maximum")
    ints = st.integers(
        min_value=None if low is None else math.ceil(low),
        max_value=None if high is None else math.floor(high),
    )
    if integer:
        return ints
    return ints | st.floats(min_value=low, max_value=high, allow_nan=False, allow_infinity=False)


def _free_form(node: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    bounds = node.get(FREE_FORM_BOUNDS, {})
    number = _number(bounds, integer=False)
    leaves = st.none() | st.booleans() | number | st.text(TEXT, max_size=20)
    values = st.recursive(
        leaves,
        lambda children: (
            st.lists(children, max_size=MAX_ITEMS)
            | st.dictionaries(st.text(TEXT, max_size=8), children, max_size=MAX_ITEMS)
        ),
        max_leaves=8,
    )
    return st.dictionaries(st.text(TEXT, max_size=8), values, max_size=MAX_ITEMS)


def valid(node: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Values the schema ``node`` accepts."""
    if "const" in node:
        return st.just(node["const"])
    options: list[st.SearchStrategy[Any]] = []
    types = types_of(node)
    if "null" in types:
        options.append(st.none())
    if "enum" in node:
        options.append(st.sampled_from(node["enum"]))
        return st.one_of(options)
    for kind in types:
        if kind == "boolean":
            options.append(st.booleans())
        elif kind in ("integer", "number"):
            if kind == "integer" or "integer" not in types:
                options.append(_number(node, integer=kind == "integer"))
        elif kind == "string":
            if "pattern" in node:
                options.append(st.from_regex(node["pattern"], fullmatch=True))
            else:
                options.append(
                    st.text(TEXT, min_size=node.get("minLength", 0), max_size=node.get("maxLength", 50))
                )
        elif kind == "array":
            low = node.get("minItems", 0)
            options.append(
                st.lists(
                    valid(node["items"]),
                    min_size=low,
                    max_size=max(low, min(node.get("maxItems", 9), MAX_ITEMS)),
                )
            )
        elif kind == "object":
            if "properties" not in node:
                options.append(_free_form(node))
            else:
                properties = node["properties"]
                required = set(node.get("required", ()))
                options.append(
                    st.fixed_dictionaries(
                        {name: valid(child) for name, child in properties.items() if name in required},
                        optional={
                            name: valid(child) for name, child in properties.items() if name not in required
                        },
                    )
                )
    return st.one_of(options)


def valid_frames(messages: frozenset[str] | None = None) -> st.SearchStrategy[dict[str, Any]]:
    """Valid frames of every message type of the schema (or of ``messages``)."""
    return st.one_of(
        [valid(schema) for name, schema in SCHEMA["$defs"].items() if messages is None or name in messages]
    )


def _paths(value: Any, parts: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path to a value inside ``value`` (the frame itself excluded)."""
    found = []
    if isinstance(value, dict):
        for key, child in value.items():
            found.append((*parts, key))
            found.extend(_paths(child, (*parts, key)))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            found.append((*parts, index))
            found.extend(_paths(child, (*parts, index)))
    return found


def _node_at(frame: dict[str, Any], parts: tuple[Any, ...]) -> dict[str, Any] | None:
    """The schema node of the value at ``parts`` of ``frame`` (None inside free-form content)."""
    node: dict[str, Any] | None = SCHEMA["$defs"].get(frame.get("type"))
    for part in parts:
        if node is None:
            return None
        node = node.get("items") if isinstance(part, int) else node.get("properties", {}).get(part)
    return node


def _replaced(frame: dict[str, Any], parts: tuple[Any, ...], value: Any) -> dict[str, Any]:
    changed = json.loads(json.dumps(frame))
    target = changed
    for part in parts[:-1]:
        target = target[part]
    target[parts[-1]] = value
    return changed


def _deleted(frame: dict[str, Any], parts: tuple[Any, ...]) -> dict[str, Any]:
    changed = json.loads(json.dumps(frame))
    target = changed
    for part in parts[:-1]:
        target = target[part]
    del target[parts[-1]]
    return changed


WRONG_VALUES: list[Any] = [None, True, -1, 1.5, "x", "", [], {}, 2**64, -(2**63) - 1, 1e308, -1e308]


def text_of(frame: Any) -> str:
    return json.dumps(frame, ensure_ascii=False, separators=(",", ":"))


@st.composite
def invalid_texts(draw: st.DrawFn) -> str:
    """The text of a frame that is wrong in one way (or, by chance, still valid: the caller asks the
    reference validator which it is)."""
    frame = draw(valid_frames(frozenset({"telemetry"})) | valid_frames())
    paths = _paths(frame)
    how = draw(
        st.sampled_from(
            [
                "wrong_value",
                "past_bound",
                "missing",
                "unknown_field",
                "repeated_key",
                "literal",
                "not_json",
                "type",
            ]
        )
    )
    if how in ("wrong_value", "past_bound", "missing", "repeated_key") and not paths:
        how = "unknown_field"
    if how == "wrong_value":
        return text_of(_replaced(frame, draw(st.sampled_from(paths)), draw(st.sampled_from(WRONG_VALUES))))
    if how == "past_bound":
        bounded = [
            parts
            for parts in paths
            if (node := _node_at(frame, parts)) is not None and "maximum" in node and "minimum" in node
        ]
        if bounded:
            parts = draw(st.sampled_from(bounded))
            node = _node_at(frame, parts)
            assert node is not None
            integer = "number" not in types_of(node)
            low, high = node["minimum"], node["maximum"]
            value = draw(
                st.sampled_from(
                    [low - 1, high + 1]
                    if integer
                    else [math.nextafter(low, -math.inf), math.nextafter(high, math.inf)]
                )
            )
            return text_of(_replaced(frame, parts, value))
        how = "missing"
    if how == "missing":
        return text_of(_deleted(frame, draw(st.sampled_from(paths)) if paths else ("type",)))
    if how == "unknown_field":
        return text_of({**frame, draw(st.text(TEXT, min_size=1, max_size=10)): 1})
    if how == "repeated_key":
        text = text_of(frame)
        key = draw(st.sampled_from(sorted(frame)))
        marker = json.dumps(key, ensure_ascii=False) + ":"
        return text.replace(marker, marker + text_of(frame[key]) + "," + marker, 1)
    if how == "literal":
        literal = draw(st.sampled_from(["NaN", "Infinity", "-Infinity", "1e400", "-1e400"]))
        numbers = [parts for parts in paths if isinstance(_value_at(frame, parts), (int, float))]
        numbers = [parts for parts in numbers if not isinstance(_value_at(frame, parts), bool)]
        if numbers:
            marker = "__LITERAL__"
            return text_of(_replaced(frame, draw(st.sampled_from(numbers)), marker)).replace(
                f'"{marker}"', literal
            )
        return text_of(frame)[:-1] + f',"x":{literal}}}'
    if how == "not_json":
        text = text_of(frame)
        cut = draw(st.integers(min_value=0, max_value=len(text) - 1))
        return draw(st.sampled_from([text[:cut], "[]", "null", "1", '"frame"', text + "}", "{'type': 1}"]))
    return text_of({**frame, "type": draw(st.sampled_from(["", "teleport", "Telemetry", "hello2"]))})


def _value_at(frame: Any, parts: tuple[Any, ...]) -> Any:
    for part in parts:
        frame = frame[part]
    return frame


AWKWARD = ["\x00", ":", "\\", '"', "\u2028", "a\x00:b\\"]


@st.composite
def with_awkward_text(draw: st.DrawFn, frames: st.SearchStrategy[dict[str, Any]]) -> dict[str, Any]:
    """A valid frame of ``frames`` with one of its free text values (no pattern, enum or const) holding
    characters that are awkward to store or to count: still valid, within the field's length."""
    frame = draw(frames)
    texts = []
    for parts in _paths(frame):
        node = _node_at(frame, parts)
        free_text = node is not None and not {"pattern", "enum", "const"} & set(node)
        if free_text and isinstance(_value_at(frame, parts), str):
            texts.append((parts, node))
    if not texts:
        return frame
    parts, node = draw(st.sampled_from(texts))
    assert node is not None
    value = draw(st.sampled_from(AWKWARD)) + _value_at(frame, parts)
    value = value[: node.get("maxLength", len(value))]
    if len(value) < node.get("minLength", 0):
        return frame
    return _replaced(frame, parts, value)
