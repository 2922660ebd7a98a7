"""The API's paginations (fleet.core.pagination) take ``limit``, ``offset`` and ``cursor`` strictly:
what is not the declared whole number (or a cursor the API gave) is a 400 naming the parameter, where
DRF silently answered the default page (found by the schema-driven fuzzing, tests/e2e/test_api_fuzz.py)."""

from __future__ import annotations

from typing import Any

import pytest

from fleet.core.events import event_record
from fleet.core.pagination import EventPagination, Pagination

MAX_OFFSET = 2**31 - 1  # the documented bound of offset

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize(
    "query",
    [
        "limit=abc",
        "limit=1.5",
        "limit=0",
        "limit=-3",
        "limit=",
        "limit=%EF%BC%91",
        "offset=-1",
        "offset=x",
        f"offset={MAX_OFFSET + 1}",
        "offset=99999999999999999999",
    ],
)
def test_a_page_parameter_that_is_not_a_whole_number_in_range_is_a_400_naming_it(
    people: Any, client_for: Any, query: str
) -> None:
    response = client_for(people.staff).get(f"/api/v1/boxes/?{query}")
    assert response.status_code == 400, response.content
    name = query.split("=")[0]
    assert list(response.json()["error"]["fields"]) == [name]


def test_valid_page_parameters_page_as_before(people: Any, client_for: Any, box_factory: Any) -> None:
    for _ in range(3):
        box_factory(organization=people.org)
    client = client_for(people.owner)
    body = client.get("/api/v1/boxes/", {"limit": 2, "offset": 1}).json()
    assert body["count"] == 3 and len(body["results"]) == 2
    # a limit over the cap still gets the cap, as documented
    assert len(client.get("/api/v1/boxes/", {"limit": 10_000}).json()["results"]) == 3
    assert client.get("/api/v1/boxes/", {"offset": MAX_OFFSET}).json()["results"] == []


def test_a_timeline_takes_its_limit_and_cursor_strictly(
    people: Any, client_for: Any, box_factory: Any
) -> None:
    box = box_factory(organization=people.org)
    for kind in ("box_online", "box_offline", "box_online"):
        event_record(box_id=box.pk, kind=kind, organization_id=people.org.pk)
    client = client_for(people.owner)
    url = f"/api/v1/boxes/{box.pk}/events/"
    page = client.get(url, {"limit": 2}).json()
    assert len(page["results"]) == 2 and page["next"]
    assert len(client.get(page["next"]).json()["results"]) == 1
    for query, name in (({"limit": "two"}, "limit"), ({"limit": 0}, "limit"), ({"cursor": "zzz"}, "cursor")):
        response = client.get(url, query)
        assert response.status_code == 400, (query, response.content)
        assert list(response.json()["error"]["fields"]) == [name]


def test_the_schema_declares_the_bounds_it_enforces() -> None:
    limit, offset = Pagination().get_schema_operation_parameters(view=None)
    assert limit["schema"] == {"type": "integer", "minimum": 1}
    assert offset["schema"] == {"type": "integer", "minimum": 0, "maximum": MAX_OFFSET}
    cursor, size = EventPagination().get_schema_operation_parameters(view=None)
    assert cursor["schema"]["type"] == "string" and size["schema"]["minimum"] == 1
