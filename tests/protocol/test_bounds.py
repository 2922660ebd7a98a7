"""Every number of the protocol has bounds in the schema, the doc states them, and the validator
holds them (issue #14 items 1 and 10). Parametrised from the schema itself: a numeric field added
without a bound, or a bound the doc does not state, fails here."""

from __future__ import annotations

import math

import pytest
from otb_protocol import SCHEMA, ProtocolError, decode, encode, validate_message

from tests.protocol.schema_walk import (
    FREE_FORM_BOUNDS,
    NumericField,
    bound_text,
    doc_section,
    example_of,
    free_form_objects,
    numeric_fields,
    path_text,
    with_value,
)

NUMERIC = numeric_fields()
FREE_FORM = free_form_objects()
FREE_FORM_IDS = [f"{message}.{path_text(parts)}" for message, parts, _ in FREE_FORM]


def field_id(field: NumericField) -> str:
    return f"{field.message}.{field.path}"


def refused(frame: dict, path: str, fragment: str) -> None:
    with pytest.raises(ProtocolError) as caught:
        validate_message(frame)
    assert caught.value.field_path == path, str(caught.value)
    assert fragment in caught.value.message, str(caught.value)


def test_the_schema_has_numeric_fields_in_every_agent_frame() -> None:
    # the walk finds what it should (else the tests below would pass on nothing)
    messages = {field.message for field in NUMERIC}
    assert {"hello", "telemetry", "heartbeat", "command_progress", "error"} <= messages
    assert "samples[0].wans[0].rtt_ms" in {field.path for field in NUMERIC}
    assert {(message, path_text(parts)) for message, parts, _ in FREE_FORM} >= {
        ("command_result", "output"),
        ("command", "params"),
    }


def test_every_numeric_field_has_both_bounds() -> None:
    unbounded = [field_id(f) for f in NUMERIC if "minimum" not in f.node or "maximum" not in f.node]
    assert unbounded == []


def test_every_free_form_object_bounds_the_numbers_and_the_nesting_in_it() -> None:
    unbounded = [
        f"{message}.{path_text(parts)}"
        for message, parts, node in FREE_FORM
        if FREE_FORM_BOUNDS not in node or "x-max-depth" not in node
    ]
    assert unbounded == []


@pytest.mark.parametrize(("message", "parts", "node"), FREE_FORM, ids=FREE_FORM_IDS)
def test_a_free_form_object_nests_up_to_its_depth_and_not_one_more(
    message: str, parts: tuple, node: dict
) -> None:
    # the object itself is the first level; orjson would take 1024, jsonb and recursive code fewer
    depth = node["x-max-depth"]
    frame = example_of(message)

    def nested(levels: int) -> dict:
        value: dict = {}
        for _ in range(levels - 1):
            value = {"a": value}
        return value

    validate_message(with_value(frame, parts, nested(depth)))
    refused(with_value(frame, parts, nested(depth + 1)), path_text((*parts, *["a"] * depth)), "nest at most")


@pytest.mark.parametrize("field", NUMERIC, ids=field_id)
def test_each_bound_is_valid_and_one_past_it_is_refused_naming_the_field(field: NumericField) -> None:
    # given a valid frame of the field's message
    frame = example_of(field.message)
    low, high = field.node["minimum"], field.node["maximum"]
    # when the field holds either bound, then the frame is valid and survives the JSON round trip
    for value in (low, high):
        at_bound = with_value(frame, field.parts, value)
        validate_message(at_bound)
        assert decode(encode(at_bound)) == at_bound
    # and one past either bound is refused, naming the field
    below, above = field.past()
    refused(with_value(frame, field.parts, below), field.path, ">=")
    refused(with_value(frame, field.parts, above), field.path, "<=")
    # as are NaN and the infinities, for a number
    if not field.integer:
        for value in (math.nan, math.inf, -math.inf):
            refused(with_value(frame, field.parts, value), field.path, "finite")


@pytest.mark.parametrize(("message", "parts", "node"), FREE_FORM, ids=FREE_FORM_IDS)
def test_numbers_inside_a_free_form_object_are_bounded_at_any_depth(
    message: str, parts: tuple, node: dict
) -> None:
    bounds = node[FREE_FORM_BOUNDS]
    low, high = bounds["minimum"], bounds["maximum"]
    frame = example_of(message)
    # numbers at the bounds, nested, are valid
    content = {"bytes": high, "figures": [{"mbps": low}, 1.5, "text", None, True]}
    validate_message(with_value(frame, parts, content))
    # one past either bound, or not finite, is refused naming the path inside the object
    where = path_text((*parts, "figures", 0, "mbps"))
    for value, fragment in (
        (low - 1, ">="),
        (high + 1, "<="),
        (1e39, "<="),
        (math.inf, "finite"),
        (math.nan, "finite"),
    ):
        bad = {"bytes": 1, "figures": [{"mbps": value}]}
        refused(with_value(frame, parts, bad), where, fragment)


@pytest.mark.parametrize("field", NUMERIC, ids=field_id)
def test_the_doc_states_the_bounds_the_schema_holds(field: NumericField) -> None:
    # docs/agent-protocol.md writes a field's bounds as `low..high` on the line naming the field, in the
    # section of its message
    expected = f"{bound_text(field.node['minimum'])}..{bound_text(field.node['maximum'])}"
    lines = [line for line in doc_section(field.message).splitlines() if f"`{field.name}`" in line]
    assert any(expected in line for line in lines), (expected, lines)


@pytest.mark.parametrize(("message", "parts", "node"), FREE_FORM, ids=FREE_FORM_IDS)
def test_the_doc_states_the_bounds_of_free_form_numbers(message: str, parts: tuple, node: dict) -> None:
    bounds = node[FREE_FORM_BOUNDS]
    expected = f"{bound_text(bounds['minimum'])}..{bound_text(bounds['maximum'])}"
    depth = f"{node['x-max-depth']} levels"
    name = f"`{parts[-1]}`"
    lines = [line for line in doc_section(message).splitlines() if name in line]
    assert any(expected in line and depth in line for line in lines), (expected, depth, lines)


def test_load1_of_1e39_is_refused() -> None:
    # the value of issue #14 item 1: it was acked, stored as Infinity and broke every read
    frame = with_value(example_of("telemetry"), ("samples", 0, "load1"), 1e39)
    refused(frame, "samples[0].load1", "<=")


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e400", "-1e400"])
def test_non_finite_literals_are_refused(literal: str) -> None:
    text = encode(example_of("telemetry")).replace('"load1":0.42', f'"load1":{literal}')
    assert literal in text
    with pytest.raises(ProtocolError):
        decode(text)


def test_rtt_and_jitter_bounds_come_from_the_schema() -> None:
    # issue #14 item 10: the doc said only ">= 0" while the schema capped them at 600000
    wan = SCHEMA["$defs"]["telemetry"]["properties"]["samples"]["items"]["properties"]["wans"]["items"]
    for name in ("rtt_ms", "jitter_ms"):
        assert (wan["properties"][name]["minimum"], wan["properties"][name]["maximum"]) == (0, 600000)
