"""The protocol schema walked by the tests: its numeric fields with their bounds, its free-form objects,
and valid frames to change one value in. Everything is read from ``otb_protocol.SCHEMA``, so a field
added to the schema is tested without a test being edited."""

from __future__ import annotations

import copy
import json
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from otb_protocol import SCHEMA

DOC = Path(__file__).resolve().parents[2] / "docs" / "agent-protocol.md"
FREE_FORM_BOUNDS = "x-number-bounds"


@dataclass(frozen=True)
class NumericField:
    """One integer or number in the schema: the message it belongs to and its path in a frame, with
    array items at index 0 (``samples[0].wans[0].rtt_ms``)."""

    message: str
    parts: tuple[str | int, ...]
    node: dict[str, Any]

    @property
    def path(self) -> str:
        return path_text(self.parts)

    @property
    def name(self) -> str:
        return str(next(part for part in reversed(self.parts) if isinstance(part, str)))

    @property
    def integer(self) -> bool:
        return "number" not in types_of(self.node)

    @property
    def nullable(self) -> bool:
        return "null" in types_of(self.node)

    def past(self) -> tuple[Any, Any]:
        """The values one past each bound: the next integer, or the next double."""
        low, high = self.node["minimum"], self.node["maximum"]
        if self.integer:
            return low - 1, high + 1
        return math.nextafter(low, -math.inf), math.nextafter(high, math.inf)


def types_of(node: dict[str, Any]) -> list[str]:
    kind = node.get("type", [])
    return [kind] if isinstance(kind, str) else list(kind)


def path_text(parts: tuple[str | int, ...]) -> str:
    """``("samples", 0, "ts")`` -> ``samples[0].ts``, as ``ProtocolError.field_path`` spells it."""
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


def _walk(node: dict[str, Any], parts: tuple[str | int, ...]) -> Iterator[tuple[tuple[str | int, ...], dict]]:
    yield parts, node
    for name, child in node.get("properties", {}).items():
        yield from _walk(child, (*parts, name))
    if "items" in node:
        yield from _walk(node["items"], (*parts, 0))


def numeric_fields(messages: frozenset[str] | None = None) -> list[NumericField]:
    """Every integer/number field of every message (or of ``messages``)."""
    return [
        NumericField(message, parts, node)
        for message, schema in SCHEMA["$defs"].items()
        if messages is None or message in messages
        for parts, node in _walk(schema, ())
        if {"integer", "number"} & set(types_of(node))
    ]


def free_form_objects() -> list[tuple[str, tuple[str | int, ...], dict[str, Any]]]:
    """(message, path, node) of every object whose content the schema leaves open (``params``,
    ``output``)."""
    return [
        (message, parts, node)
        for message, schema in SCHEMA["$defs"].items()
        for parts, node in _walk(schema, ())
        if "object" in types_of(node) and "properties" not in node
    ]


def doc_examples() -> list[dict[str, Any]]:
    """The JSON examples of docs/agent-protocol.md (each is a valid frame)."""
    return [json.loads(block) for block in re.findall(r"```json\n(.*?)```", DOC.read_text(), re.S)]


def example_of(message: str) -> dict[str, Any]:
    """A valid frame of ``message``: the doc's first example of it."""
    return copy.deepcopy(next(example for example in doc_examples() if example["type"] == message))


def with_value(frame: dict[str, Any], parts: tuple[str | int, ...], value: Any) -> dict[str, Any]:
    """A copy of ``frame`` with the value at ``parts`` replaced."""
    changed = copy.deepcopy(frame)
    target: Any = changed
    for part in parts[:-1]:
        target = target[part]
    target[parts[-1]] = value
    return changed


def bound_text(value: float) -> str:
    """A bound as docs/agent-protocol.md writes it: ``2^63-1``, ``-(2^53-1)``, ``600000``, ``0.5``."""
    names = {2**63 - 1: "2^63-1", 2**53 - 1: "2^53-1", -(2**53 - 1): "-(2^53-1)"}
    if value in names:
        return names[int(value)]
    if float(value).is_integer():
        return str(int(value))
    return repr(value)


def doc_section(message: str) -> str:
    """The text of the doc's ``### `message` `` section."""
    text = DOC.read_text()
    match = re.search(rf"^### `{re.escape(message)}`.*?(?=^### |^## )", text, re.S | re.M)
    assert match, f"docs/agent-protocol.md has no section for {message}"
    return match.group(0)
