"""Figures as people read them: ``{{ rate|bitrate }}`` -> "12.3 Mbit/s"."""

from __future__ import annotations

from typing import Any

from django import template

register = template.Library()

_RATE_UNITS = (("Gbit/s", 1e9), ("Mbit/s", 1e6), ("kbit/s", 1e3))
UNKNOWN = "\N{EN DASH}"  # what the pages show for a figure not known yet


@register.filter
def bitrate(bps: Any) -> str:
    """A rate in bits per second, in the largest unit it reaches; an en dash when unknown."""
    if bps is None or isinstance(bps, bool) or not isinstance(bps, int | float):
        return UNKNOWN
    for unit, size in _RATE_UNITS:
        if bps >= size:
            return f"{bps / size:.1f} {unit}"
    return f"{int(bps)} bit/s"


@register.filter
def bytesize(size: Any) -> str:
    """A size in bytes as people read it, with the exact count: "12.4 MB (12,402,688 bytes)"."""
    if size is None or isinstance(size, bool) or not isinstance(size, int):
        return UNKNOWN
    for unit, factor in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if size >= factor:
            return f"{size / factor:.1f} {unit} ({size:,} bytes)"
    return f"{size:,} bytes"
