"""The API's JSON parser (the default for every endpoint, see REST_FRAMEWORK in settings).

Kept in its own module that imports nothing but DRF's parsers: settings load it by dotted path
while rest_framework.views is still importing, so it must not pull views in.
"""

from __future__ import annotations

from typing import Any

from rest_framework import parsers
from rest_framework.exceptions import ParseError


class JSONParser(parsers.JSONParser):
    """DRF's strict JSON parser, also refusing nesting too deep for Python's decoder (which raises
    RecursionError, not ValueError, and would otherwise end as a 500)."""

    def parse(self, stream: Any, media_type: str | None = None, parser_context: Any = None) -> Any:
        try:
            return super().parse(stream, media_type, parser_context)
        except RecursionError as exc:
            raise ParseError("JSON parse error - nested too deeply") from exc
