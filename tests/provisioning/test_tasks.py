"""Quarantine: a released address is not reused before its cool-down passes, then it is."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from fleet.core.audit import Actor
from fleet.core.models import Box, Organization
from provisioning.choices import AssignmentState, PoolPurpose
from provisioning.models import AddressAssignment, AddressPool
from provisioning.services.infrastructure import addresses_release_quarantined
from provisioning.services.lifecycle import box_claim, box_unclaim
from provisioning.tasks import addresses_release_quarantined_task
from tests.provisioning.conftest import CLAIM_CODE

pytestmark = pytest.mark.django_db


def _public(box: Box) -> str:
    return AddressAssignment.objects.get(
        box=box, purpose=PoolPurpose.PUBLIC_IPV4, state=AssignmentState.ACTIVE
    ).prefix


def _claim(actor: Actor, org: Organization, box: Box) -> Box:
    return box_claim(actor=actor, organization=org, serial=box.serial, claim_code=CLAIM_CODE)


def test_released_address_is_held_until_the_cool_down_passes(actor, org, provisioned, make_box):
    # given a box that held the first public address and was unclaimed
    first = _claim(actor, org, make_box())
    released = _public(first)
    box_unclaim(actor=actor, box=first)

    # when another box is claimed during the cool-down (and the task has run)
    assert addresses_release_quarantined_task() == 0
    second = _claim(actor, org, make_box())

    # then it does not get the released address
    assert _public(second) != released

    # and when the cool-down has passed and the task runs, the address is free again
    row = AddressAssignment.objects.get(prefix=released)
    AddressAssignment.objects.filter(pk=row.pk).update(quarantine_until=timezone.now() - timedelta(seconds=1))
    assert addresses_release_quarantined_task() == 1
    assert not AddressAssignment.objects.filter(prefix=released).exists()
    pool = AddressPool.objects.get(pk=provisioned["pools"][PoolPurpose.PUBLIC_IPV4].pk)
    assert pool.free_index_hint == 1  # the index of the released address (.1: .0 is never handed out)
    third = _claim(actor, org, make_box())
    assert _public(third) == released


def test_release_is_bounded_in_batches(actor, org, provisioned, make_box):
    boxes = [_claim(actor, org, make_box()) for _ in range(3)]
    for box in boxes:
        box_unclaim(actor=actor, box=box)
    later = timezone.now() + timedelta(days=365)
    assert addresses_release_quarantined(now=later, batch_size=4) == 4
    assert addresses_release_quarantined(now=later, batch_size=4) == 4
    assert addresses_release_quarantined(now=later, batch_size=4) == 1
    assert addresses_release_quarantined(now=later, batch_size=4) == 0


def test_stale_hint_is_recovered_before_reporting_exhaustion(actor, org, provisioned, make_box):
    # given a pool whose hint points past its end although its first usable index is free
    AddressPool.objects.filter(pk__in=[p.pk for p in provisioned["pools"].values()]).update(
        free_index_hint=10_000
    )

    # when a box is claimed, then it still gets the lowest free prefix
    box = _claim(actor, org, make_box())
    assert _public(box) == "203.0.113.1/32"  # the lowest host address
