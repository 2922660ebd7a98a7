"""The API's two ways to page a list, both served by ``ApiView.paginated`` (fleet/apis/base.py):
limit/offset for lists (REST_FRAMEWORK's DEFAULT_PAGINATION_CLASS) and a cursor for timelines.

Kept in its own module that imports nothing but DRF's pagination (and the public-link rule): settings
load it by dotted path while rest_framework.generics is still importing, so it must not pull views or
schemas in.

``next`` and ``previous`` are absolute links on the public address (``OTB_PUBLIC_URL``), not on the
request's Host header (fleet.core.links). ``limit``, ``offset`` and ``cursor`` are strict: a value
that is not what the schema declares is a 400 naming the parameter (DRF quietly used the default),
so a client never gets a page it did not ask for.
"""

from __future__ import annotations

from typing import Any

from rest_framework.exceptions import NotFound, ValidationError
from rest_framework.pagination import CursorPagination, LimitOffsetPagination
from rest_framework.request import Request

from fleet.core.links import public_link_rebased

MAX_OFFSET = 2**31 - 1


def _public(link: str | None) -> str | None:
    return None if link is None else public_link_rebased(link)


def whole_number_parameter(
    request: Request, name: str, *, minimum: int, maximum: int | None = None
) -> int | None:
    """The query parameter ``name`` as a whole number from ``minimum`` (to ``maximum``), None when it
    is absent; anything else is a 400 naming it."""
    raw = request.query_params.get(name)
    if raw is None:
        return None
    if (
        not (raw.isascii() and raw.isdigit())
        or int(raw) < minimum
        or (maximum is not None and int(raw) > maximum)
    ):
        bound = f"from {minimum}" + (f" to {maximum}" if maximum is not None else "")
        raise ValidationError({name: [f"must be a whole number {bound}"]})
    return int(raw)


def _integer_schema(parameters: list[dict[str, Any]], name: str, **bounds: int) -> list[dict[str, Any]]:
    for parameter in parameters:
        if parameter["name"] == name:
            parameter["schema"] = {**parameter["schema"], **bounds}
    return parameters


class Pagination(LimitOffsetPagination):
    """``?limit=&offset=`` (50 by default, at most 500), answering ``{count, next, previous, results}``."""

    default_limit = 50
    max_limit = 500

    def get_limit(self, request: Request) -> int:
        limit = whole_number_parameter(request, self.limit_query_param, minimum=1)
        return self.default_limit if limit is None else min(limit, self.max_limit)

    def get_offset(self, request: Request) -> int:
        offset = whole_number_parameter(request, self.offset_query_param, minimum=0, maximum=MAX_OFFSET)
        return offset or 0

    def get_schema_operation_parameters(self, view: Any) -> list[dict[str, Any]]:
        parameters = super().get_schema_operation_parameters(view)
        _integer_schema(parameters, self.limit_query_param, minimum=1)
        return _integer_schema(parameters, self.offset_query_param, minimum=0, maximum=MAX_OFFSET)

    def get_next_link(self) -> str | None:
        return _public(super().get_next_link())

    def get_previous_link(self) -> str | None:
        return _public(super().get_previous_link())


class EventPagination(CursorPagination):
    """Keyset pagination of an events timeline (``?limit=&cursor=``, 50 by default, at most 500,
    answering ``{next, previous, results}``): no COUNT(*) over a large timeline, stable while new
    events arrive."""

    ordering = ("-ts", "-id")
    page_size = 50
    page_size_query_param = "limit"
    max_page_size = 500

    def get_page_size(self, request: Request) -> int:
        limit = whole_number_parameter(request, self.page_size_query_param, minimum=1)
        return self.page_size if limit is None else min(limit, self.max_page_size)

    def decode_cursor(self, request: Request) -> Any:
        try:
            return super().decode_cursor(request)
        except NotFound as exc:  # DRF answers a malformed cursor with 404, as if the list were gone
            raise ValidationError(
                {self.cursor_query_param: ["invalid cursor: follow next or previous"]}
            ) from exc

    def get_schema_operation_parameters(self, view: Any) -> list[dict[str, Any]]:
        return _integer_schema(
            super().get_schema_operation_parameters(view), self.page_size_query_param, minimum=1
        )

    def get_next_link(self) -> str | None:
        return _public(super().get_next_link())

    def get_previous_link(self) -> str | None:
        return _public(super().get_previous_link())
