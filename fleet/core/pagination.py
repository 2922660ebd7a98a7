"""The API's two ways to page a list, both served by ``ApiView.paginated`` (fleet/apis/base.py):
limit/offset for lists (REST_FRAMEWORK's DEFAULT_PAGINATION_CLASS) and a cursor for timelines.

Kept in its own module that imports nothing but DRF's pagination (and the public-link rule): settings
load it by dotted path while rest_framework.generics is still importing, so it must not pull views or
schemas in.

``next`` and ``previous`` are absolute links on the public address (``OTB_PUBLIC_URL``), not on the
request's Host header (fleet.core.links).
"""

from __future__ import annotations

from rest_framework.pagination import CursorPagination, LimitOffsetPagination

from fleet.core.links import public_link_rebased


def _public(link: str | None) -> str | None:
    return None if link is None else public_link_rebased(link)


class Pagination(LimitOffsetPagination):
    """``?limit=&offset=`` (50 by default, at most 500), answering ``{count, next, previous, results}``."""

    default_limit = 50
    max_limit = 500

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

    def get_next_link(self) -> str | None:
        return _public(super().get_next_link())

    def get_previous_link(self) -> str | None:
        return _public(super().get_previous_link())
