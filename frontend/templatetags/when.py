"""Dates and times on every page in one format: ``{{ value|when }}``.

The server writes ``<time datetime="ISO">6 Dec 2026, 15:42:05 UTC</time>``; the portal's script
(``portal.js``) rewrites every ``<time datetime>`` in the viewer's time zone, in the same format
without the zone (which it puts in the title), so a page never mixes formats or zones.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from django import template
from django.utils import dateformat
from django.utils.html import format_html
from django.utils.safestring import SafeString

register = template.Library()

FORMAT = "j M Y, H:i:s"  # 6 Dec 2026, 15:42:05 (portal.js: the same, in the viewer's zone)


@register.filter
def when(value: Any) -> SafeString | str:
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            return value
    if not isinstance(value, datetime):
        return "\N{EN DASH}"
    moment = value.astimezone(UTC)
    text = dateformat.format(moment, FORMAT)
    return format_html('<time datetime="{}">{} UTC</time>', moment.isoformat(), text)
