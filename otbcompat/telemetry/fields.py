"""Bounded readers for the box's JSON: each returns the value or raises OtbBadRequest naming the field
(``interfaces[2].public_ip: …``), so a report is validated whole before anything is written."""

from __future__ import annotations

import ipaddress
import json
import math
from typing import Any

from otbcompat.errors import OtbBadRequest

# The largest integer a PostgreSQL bigint holds, and what the box's 64-bit counters reach.
BIGINT_MAX = 2**63 - 1
COUNTER_MAX = 2**64 - 1


def without_nul(text: str) -> str:
    """PostgreSQL text and jsonb cannot hold NUL: dropped, as the agent paths do."""
    return text.replace("\x00", "") if "\x00" in text else text


def bad(path: str, message: str) -> OtbBadRequest:
    return OtbBadRequest(f"{path}: {message}"[:300])


def mapping(value: Any, path: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise bad(path, "must be a JSON object")
    return value


def listing(value: Any, path: str, *, max_items: int, allow_null: bool = True) -> list[Any]:
    if value is None and allow_null:
        return []
    if not isinstance(value, list):
        raise bad(path, "must be a JSON array")
    if len(value) > max_items:
        raise bad(path, f"at most {max_items} items")
    return value


def text(value: Any, path: str, *, max_len: int, required: bool = False) -> str:
    """A string of at most ``max_len`` characters; null (or absent) is "" unless ``required``."""
    if value is None and not required:
        return ""
    if not isinstance(value, str):
        raise bad(path, "must be a string")
    value = without_nul(value)
    if required and not value.strip():
        raise bad(path, "must not be empty")
    if len(value) > max_len:
        raise bad(path, f"at most {max_len} characters")
    return value


def number(value: Any, path: str, *, minimum: float, maximum: float) -> float:
    """A finite JSON number within [minimum, maximum] (a numeric string, as a shell may send, too)."""
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError as exc:
            raise bad(path, "must be a number") from exc
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise bad(path, "must be a number")
    if not math.isfinite(value) or not minimum <= value <= maximum:
        raise bad(path, f"must be a number from {minimum:g} to {maximum:g}")
    return float(value)


def integer(value: Any, path: str, *, minimum: int, maximum: int) -> int:
    """A whole number within [minimum, maximum] (``12.0`` and ``"12"`` are 12)."""
    if isinstance(value, str):
        value = value.strip()
        if not value.lstrip("-").isdigit():
            raise bad(path, "must be a whole number")
        value = int(value)
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise bad(path, "must be a whole number")
    if not minimum <= value <= maximum:
        raise bad(path, f"must be a whole number from {minimum} to {maximum}")
    return value


def ip_or_none(value: Any, path: str) -> str | None:
    """An IP address, or None for "" / null / anything that is not one. The box fills ``public_ip``
    from a third-party web answer it does not check: an unknown address, never a refused report."""
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise bad(path, "must be a string")
    try:
        return str(ipaddress.ip_address(value.strip()))
    except ValueError:
        return None


def free_form(value: Any, path: str, *, max_chars: int, max_depth: int = 4) -> Any:
    """Free-form JSON (an event's ``details``): bounded in size and nesting, strings without NUL."""

    def clean(item: Any, depth: int) -> Any:
        if depth > max_depth:
            raise bad(path, f"nested deeper than {max_depth}")
        if isinstance(item, str):
            return without_nul(item)
        if isinstance(item, dict):
            return {without_nul(str(key)): clean(inner, depth + 1) for key, inner in item.items()}
        if isinstance(item, list):
            return [clean(inner, depth + 1) for inner in item]
        if isinstance(item, int) and not isinstance(item, bool) and abs(item) > BIGINT_MAX:
            raise bad(path, "a number is out of range")
        return item

    cleaned = clean(value, 0)
    if len(json.dumps(cleaned)) > max_chars:
        raise bad(path, f"at most {max_chars} characters of JSON")
    return cleaned
