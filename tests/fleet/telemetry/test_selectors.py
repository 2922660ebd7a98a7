"""Reads of the live status: the links of a box are those of its latest report."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from fleet.telemetry.models import WanStatus
from fleet.telemetry.selectors import box_live_status, box_wans

pytestmark = pytest.mark.django_db


def link(box: Any, iface: str, at: Any) -> WanStatus:
    return WanStatus.objects.create(
        box=box, iface=iface, kind="fiber", up=True, up_changed_at=at, updated_at=at
    )


def test_a_link_the_box_stopped_reporting_is_not_one_of_its_links(
    box_factory: Any, django_assert_num_queries: Any
) -> None:
    # given a box that reported wan1 and wan2, then (its policy disabling wan2) only wan1 and wan3
    box = box_factory()
    before = timezone.now() - timedelta(minutes=5)
    latest = timezone.now()
    link(box, "wan2", before)
    link(box, "wan1", latest)
    link(box, "wan3", latest)
    # when its links are read
    with django_assert_num_queries(1):
        wans = box_wans(box_id=box.pk)
    # then they are those of the latest report, by name
    assert [wan.iface for wan in wans] == ["wan1", "wan3"]
    assert [wan.iface for wan in box_live_status(box_id=box.pk)[1]] == ["wan1", "wan3"]


def test_a_box_offline_for_long_keeps_its_last_links(box_factory: Any) -> None:
    box = box_factory()
    long_ago = timezone.now() - timedelta(days=30)
    link(box, "wan", long_ago)
    link(box, "wan2", long_ago)
    assert [wan.iface for wan in box_wans(box_id=box.pk)] == ["wan", "wan2"]
    assert box_wans(box_id=box_factory().pk) == []
