"""The fleet page and claiming a box."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest
from django.contrib.auth.models import User
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from fleet.core.models import AuditLog, Box, Organization
from fleet.telemetry.models import BoxStatus
from tests.conftest import CLAIM_CODE

pytestmark = pytest.mark.django_db


def logged_in(user: User) -> Client:
    client = Client()
    client.force_login(user)
    return client


def boxes_with_status(
    box_factory: Callable[..., Box], organization: Organization, count: int, *, prefix: str = "BOX"
) -> list[Box]:
    boxes = [box_factory(f"{prefix}-{index:04d}", organization=organization) for index in range(count)]
    now = timezone.now()
    BoxStatus.objects.bulk_create(
        [
            BoxStatus(box=box, online=index % 2 == 0, last_seen_at=now, wans_up=1 + index % 2, wans_total=2)
            for index, box in enumerate(boxes)
        ]
    )
    return boxes


def test_fleet_page_lists_the_organisations_boxes_with_their_state(people, box_factory) -> None:
    # given two boxes of the organisation (one online) and one of another organisation
    boxes_with_status(box_factory, people.org, 2)
    box_factory("FOREIGN-1", organization=people.other_org)
    # when a viewer opens the fleet page
    response = logged_in(people.viewer).get("/boxes/")
    # then both boxes are listed, with online/offline and WANs up out of total, and nothing foreign
    assert response.status_code == 200
    content = response.content.decode()
    assert "BOX-0000" in content and "BOX-0001" in content
    assert "FOREIGN-1" not in content
    assert "Online" in content and "Offline" in content
    assert "1/2" in content and "2/2" in content


def test_fleet_page_search_and_status_filter(people, box_factory) -> None:
    boxes_with_status(box_factory, people.org, 4)
    client = logged_in(people.viewer)
    # when searching by serial
    content = client.get("/boxes/", {"q": "BOX-0003"}).content.decode()
    assert "BOX-0003" in content and "BOX-0002" not in content
    # when filtering on online boxes (even indexes are online)
    content = client.get("/boxes/", {"status": "online"}).content.decode()
    assert "BOX-0000" in content and "BOX-0002" in content and "BOX-0001" not in content
    # a bad filter is said next to its field, and no box is listed (not silently every box)
    bad = client.get("/boxes/", {"status": "bogus", "page": "x"})
    assert bad.status_code == 400
    content = bad.content.decode()
    assert re.search(r'id="id_status-errors"[^>]*><li>Choose a status from the list\.', content)
    assert "BOX-0000" not in content
    # a search over 100 characters too
    long = client.get("/boxes/", {"q": "x" * 101})
    assert long.status_code == 400
    assert "Search for at most 100 characters (this one has 101)." in long.content.decode()
    # a page number that is not one shows the first page, and says so
    content = client.get("/boxes/", {"page": "x"}).content.decode()
    assert "There is no page “x”" in content and "BOX-0000" in content
    content = client.get("/boxes/", {"page": "9"}).content.decode()
    assert "There is no page 9: showing page 1, the last one." in content


def test_fleet_page_htmx_request_gets_only_the_table(people, box_factory) -> None:
    boxes_with_status(box_factory, people.org, 1)
    response = logged_in(people.viewer).get("/boxes/", HTTP_HX_REQUEST="true", HTTP_HX_TARGET="fleet-results")
    assert response.status_code == 200
    assert b"<html" not in response.content and b"BOX-0000" in response.content


def test_fleet_page_is_paginated(people, box_factory) -> None:
    boxes_with_status(box_factory, people.org, 55)
    client = logged_in(people.viewer)
    first = client.get("/boxes/").content.decode()
    second = client.get("/boxes/", {"page": 2}).content.decode()
    assert "BOX-0049" in first and "BOX-0050" not in first
    assert "BOX-0050" in second and "Page 2 of 2" in second


def test_fleet_page_runs_the_same_number_of_queries_for_1_and_50_boxes(people, box_factory) -> None:
    # given a session that has already loaded its user once
    client = logged_in(people.viewer)
    boxes_with_status(box_factory, people.org, 1, prefix="ONE")
    client.get("/boxes/")
    with CaptureQueriesContext(connection) as one:
        assert client.get("/boxes/").status_code == 200
    # when the organisation has 50 boxes
    boxes_with_status(box_factory, people.org, 49, prefix="MORE")
    with CaptureQueriesContext(connection) as fifty:
        response = client.get("/boxes/")
    # then the page costs exactly as many queries (one list query, one count, one for the filters)
    assert response.content.decode().count('<tr data-box="') == 50
    assert len(fifty) == len(one), [q["sql"] for q in fifty.captured_queries]
    assert len(fifty) <= 8


def test_claim_a_box(people, box_factory, provisioned_region) -> None:
    # given an imported box and an admin of the organisation
    box = box_factory("NEW-0001")
    client = logged_in(people.admin)
    assert client.get("/boxes/claim/").status_code == 200
    # when the admin claims it with serial and claim code
    response = client.post("/boxes/claim/", {"serial": "NEW-0001", "claim_code": CLAIM_CODE})
    # then it is claimed into the organisation and the person lands on the box page
    box.refresh_from_db()
    assert box.organization_id == people.org.pk
    assert response.status_code == 302 and response["Location"] == f"/boxes/{box.pk}/"
    assert AuditLog.objects.filter(action="box.claim", box=box).exists()


def test_claim_with_a_wrong_code_shows_a_clear_error_on_the_field(
    people, box_factory, provisioned_region
) -> None:
    box_factory("NEW-0002")
    response = logged_in(people.admin).post("/boxes/claim/", {"serial": "NEW-0002", "claim_code": "wrong"})
    assert response.status_code == 400
    content = response.content.decode()
    assert "The serial number or the claim code is wrong" in content
    assert 'id="id_claim_code-errors"' in content
    assert Box.objects.get(serial="NEW-0002").organization_id is None


def test_claim_a_box_with_its_serial_in_lower_case(people, box_factory, provisioned_region) -> None:
    # given a box labelled NEW-0003
    box = box_factory("NEW-0003")
    # when the admin types new-0003
    response = logged_in(people.admin).post("/boxes/claim/", {"serial": "new-0003", "claim_code": CLAIM_CODE})
    # then that box is claimed
    assert response.status_code == 302 and response["Location"] == f"/boxes/{box.pk}/"
    assert Box.objects.get(pk=box.pk).organization_id == people.org.pk


def test_claiming_a_box_again_says_nothing_changed(people, box_factory, provisioned_region) -> None:
    box = box_factory("NEW-0004")
    client = logged_in(people.admin)
    client.post("/boxes/claim/", {"serial": "NEW-0004", "claim_code": CLAIM_CODE})
    response = client.post("/boxes/claim/", {"serial": "NEW-0004", "claim_code": CLAIM_CODE}, follow=True)
    assert response.redirect_chain == [(f"/boxes/{box.pk}/", 302)]
    assert "NEW-0004 was already part of Acme: nothing changed." in response.content.decode()
    assert AuditLog.objects.filter(action="box.claim", box=box).count() == 1


def test_claim_refused_after_failures_says_how_long_to_wait(
    people, box_factory, provisioned_region, settings
) -> None:
    # given two failed claims of a serial, the limit
    settings.OTB = {**settings.OTB, "CLAIM_MAX_FAILURES": 2, "AUTH_FAILURE_WINDOW_S": 600}
    box_factory("NEW-0005")
    client = logged_in(people.admin)
    for _ in range(2):
        assert client.post("/boxes/claim/", {"serial": "NEW-0005", "claim_code": "wrong"}).status_code == 400
    # when the right code comes next
    response = client.post("/boxes/claim/", {"serial": "NEW-0005", "claim_code": CLAIM_CODE})
    # then the page says why and for how long, and the response carries Retry-After
    assert response.status_code == 429
    assert 590 <= int(response["Retry-After"]) <= 600
    assert (
        "Too many failed claim attempts for this serial number. Try again in 10 minutes."
        in response.content.decode()
    )
    assert Box.objects.get(serial="NEW-0005").organization_id is None


def test_claim_with_missing_fields_names_them(people) -> None:
    response = logged_in(people.admin).post("/boxes/claim/", {"serial": ""})
    assert response.status_code == 400
    assert 'id="id_serial-errors"' in response.content.decode()


def test_a_viewer_cannot_claim(people, box_factory, provisioned_region) -> None:
    box_factory("NEW-0003")
    client = logged_in(people.viewer)
    assert b"Only admins and owners" in client.get("/boxes/claim/").content
    response = client.post("/boxes/claim/", {"serial": "NEW-0003", "claim_code": CLAIM_CODE})
    assert response.status_code == 403
    assert Box.objects.get(serial="NEW-0003").organization_id is None


def test_claim_an_overthebox_box_by_its_device_id(people, provisioned_region) -> None:
    from otbcompat.models import OtbDevice
    from tests.otbcompat.test_identity import subscribe

    # given a stock OverTheBox box that subscribed
    answer = subscribe(Client(), mac="00:0d:b9:4a:31:01")
    client = logged_in(people.admin)
    # an unknown id is an error on the device id field, and nothing is claimed
    wrong = client.post("/boxes/claim/", {"device_id": "00000000-0000-0000-0000-000000000000"})
    assert wrong.status_code == 400 and 'id="id_device_id-errors"' in wrong.content.decode()
    # when the admin types the device id the box shows (no serial, no claim code)
    response = client.post("/boxes/claim/", {"device_id": answer["device_id"]})
    # then a box is claimed for the organisation, linked to the device, and the admin lands on it
    device = OtbDevice.objects.select_related("box").get(id=answer["device_id"])
    assert device.box is not None and device.box.organization_id == people.org.pk
    assert response.status_code == 302 and response["Location"] == f"/boxes/{device.box.pk}/"
