"""The REST edge follows one convention: every view under /api/v1/ is an ``ApiView`` (body limit before
parsing, JSON only, schema names, ``actor()``) and pages through its one ``paginated()``; the
settings' DRF defaults say the same, so a view that forgets the base class still behaves alike."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from django.conf import settings
from django.urls import URLPattern, URLResolver, get_resolver
from django.utils.module_loading import import_string

from fleet.core.apis.base import ApiSchema, ApiView
from fleet.core.models import Region
from fleet.core.pagination import EventPagination, Pagination

API_PREFIX = "api/v1/"


def _routes(patterns: list[Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(route, view callback) of every URL pattern, included URLconfs walked recursively."""
    for pattern in patterns:
        route = prefix + str(pattern.pattern)
        if isinstance(pattern, URLResolver):
            yield from _routes(pattern.url_patterns, route)
        elif isinstance(pattern, URLPattern):
            yield route, pattern.callback


def _api_views() -> list[tuple[str, Any]]:
    return [
        (route, getattr(callback, "view_class", None) or callback)
        for route, callback in _routes(get_resolver(settings.ROOT_URLCONF).url_patterns)
        if route.startswith(API_PREFIX)
    ]


def test_every_rest_view_is_an_api_view() -> None:
    # given every route the project serves under /api/v1/
    views = _api_views()
    assert len(views) > 60  # the walk found the API, not an empty URLconf
    # then each one is served by a class derived from ApiView
    strays = sorted(
        f"{route} -> {getattr(view, '__qualname__', view)}"
        for route, view in views
        if not (isinstance(view, type) and issubclass(view, ApiView))
    )
    assert strays == [], "REST views that are not fleet.core.apis.base.ApiView subclasses"


def test_every_rest_view_pages_through_the_one_entry_point() -> None:
    # no view brings a paginate method or a pagination of its own: limit/offset, or a cursor for timelines
    for route, view in _api_views():
        assert view.paginated is ApiView.paginated, route
        assert view.pagination_class in {Pagination, EventPagination}, route


def test_settings_defaults_agree_with_the_base_class() -> None:
    rest = settings.REST_FRAMEWORK
    pagination_class, schema_class = rest["DEFAULT_PAGINATION_CLASS"], rest["DEFAULT_SCHEMA_CLASS"]
    assert isinstance(pagination_class, str) and isinstance(schema_class, str)
    assert import_string(pagination_class) is Pagination is ApiView.pagination_class
    assert [import_string(path) for path in rest["DEFAULT_PARSER_CLASSES"]] == ApiView.parser_classes
    assert import_string(schema_class) is ApiSchema
    assert isinstance(ApiView.schema, ApiSchema)
    assert "PAGE_SIZE" not in rest  # the page size is Pagination's, in one place
    assert (Pagination.default_limit, Pagination.max_limit) == (50, 500)
    assert (EventPagination.page_size, EventPagination.max_page_size) == (50, 500)


@pytest.mark.django_db
def test_a_list_that_had_no_cap_now_caps_limit_at_500(people: Any, client_for: Any) -> None:
    # given more regions than the cap (the regions list used a bare LimitOffsetPagination, no max_limit)
    Region.objects.bulk_create(Region(code=f"r-{index:04d}", name=f"Region {index}") for index in range(520))
    client = client_for(people.staff)
    # when staff ask for far more than the cap
    body = client.get("/api/v1/regions/", {"limit": 10_000}).json()
    # then they get 500, with the count of everything and a next page of 500 more
    assert body["count"] == 520
    assert len(body["results"]) == 500
    assert "limit=500" in body["next"] and "offset=500" in body["next"]
    # and without a limit, the default page of 50
    assert len(client.get("/api/v1/regions/").json()["results"]) == 50
