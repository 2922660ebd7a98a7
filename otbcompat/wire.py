"""The box's JSON as we read it: standard JSON only."""

from __future__ import annotations

import json
import math
from typing import Any


def _not_a_number(constant: str) -> Any:
    raise ValueError(f"{constant} is not JSON")


def _finite_float(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):  # 1e999 parses as inf
        raise ValueError(f"{text[:20]} is out of range")
    return number


def json_loads(raw: str | bytes, *, strict: bool = True) -> Any:
    """Standard JSON only: NaN, Infinity and numbers beyond a double are refused (ValueError), so no
    value a box sends can become a non-finite float. ``strict=False`` also takes control characters
    inside strings (a raw newline the box's shell pasted into a value)."""
    return json.loads(raw, parse_constant=_not_a_number, parse_float=_finite_float, strict=strict)
