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
def bytesize(size: Any, short: str = "") -> str:
    """A size in bytes as people read it, with the exact count: "12.4 MB (12,402,688 bytes)";
    ``|bytesize:"short"`` leaves the count out."""
    if size is None or isinstance(size, bool) or not isinstance(size, int):
        return UNKNOWN
    for unit, factor in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if size >= factor:
            readable = f"{size / factor:.1f} {unit}"
            return readable if short else f"{readable} ({size:,} bytes)"
    return f"{size:,} bytes"


@register.filter
def memory_kib(kib: Any) -> str:
    """Memory as ``/proc/meminfo`` counts it (KiB, which it writes "kB"): "1.4 GiB", "512 MiB"."""
    if kib is None or isinstance(kib, bool) or not isinstance(kib, int | float):
        return UNKNOWN
    if kib >= 1024 * 1024:
        return f"{kib / (1024 * 1024):.1f} GiB"
    if kib >= 1024:
        return f"{kib / 1024:.0f} MiB"
    return f"{int(kib)} KiB"


@register.filter
def duration(seconds: Any) -> str:
    """A duration in seconds in its largest whole unit: "1 h", "90 min", "2 days", "45 s"."""
    if seconds is None or isinstance(seconds, bool) or not isinstance(seconds, int | float):
        return UNKNOWN
    seconds = int(seconds)
    for unit, size in (("day", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size and seconds % size == 0:
            count = seconds // size
            return f"{count} {unit}{'s' if unit == 'day' and count > 1 else ''}"
    if seconds >= 60:
        return f"{seconds // 60} min {seconds % 60} s"
    return f"{seconds} s"
