"""Firmware version ordering: numeric parts compare as numbers, other parts as text.

``1.10.0 > 1.9.2``, ``24.10.1-otb3 > 24.10.1-otb2``; a pre-release marker sorts before the plain
version (``2.0.0-rc1 < 2.0.0``), as semantic versioning has it.
"""

from __future__ import annotations

import re
from functools import lru_cache

_PART_RE = re.compile(r"\d+|[A-Za-z]+")


@lru_cache(maxsize=4096)
def version_key(version: str) -> tuple:
    head, _, suffix = (version or "").strip().lstrip("vV").partition("-")
    numbers = tuple(
        (0, int(part), "") if part.isdigit() else (1, 0, part.lower()) for part in _PART_RE.findall(head)
    )
    if not suffix:
        # a release without a pre-release suffix sorts after the same version with one
        return (numbers, (1,))
    rest = tuple(
        (0, int(part), "") if part.isdigit() else (1, 0, part.lower()) for part in _PART_RE.findall(suffix)
    )
    return (numbers, (0, rest))


def version_in_range(version: str, minimum: str | None, maximum: str | None) -> bool:
    """``minimum <= version < maximum`` (either bound may be missing); an empty version is never in."""
    if not version:
        return False
    key = version_key(version)
    if minimum and key < version_key(minimum):
        return False
    return not (maximum and key >= version_key(maximum))
