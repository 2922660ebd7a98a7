"""The allocation engine under real concurrency: claims on separate database connections."""

from __future__ import annotations

import threading
from datetime import timedelta
from typing import Any

import pytest
from django.db import connection
from django.utils import timezone

from fleet.core.audit import Actor
from fleet.core.choices import BoxState
from fleet.core.errors import Conflict
from fleet.core.models import Box
from provisioning.choices import AssignmentState, PoolPurpose
from provisioning.models import AddressAssignment, AggregationServer, TunnelCredential
from provisioning.secrets import secret_decrypt
from provisioning.selectors.infrastructure import pool_utilisation, pools_with_utilisation
from provisioning.services.infrastructure import addresses_release_quarantined, pool_create
from provisioning.services.lifecycle import box_claim, box_unclaim
from tests.provisioning.conftest import CLAIM_CODE


def _claim_concurrently(org: Any, boxes: list[Box]) -> list[Any]:
    """Claim every box from its own thread (own connection), all released at once by a barrier."""
    barrier = threading.Barrier(len(boxes))
    results: list[Any] = [None] * len(boxes)

    def claim(position: int, serial: str) -> None:
        try:
            barrier.wait(timeout=30)
            results[position] = box_claim(
                actor=Actor.system("test"), organization=org, serial=serial, claim_code=CLAIM_CODE
            )
        except Exception as exc:  # collected and asserted on by the test
            results[position] = exc
        finally:
            connection.close()

    threads = [threading.Thread(target=claim, args=(i, box.serial)) for i, box in enumerate(boxes)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return results


def _assert_all_distinct(boxes: list[Box]) -> None:
    rows = list(AddressAssignment.objects.filter(box__in=boxes, state=AssignmentState.ACTIVE))
    assert len(rows) == 3 * len(boxes)
    for purpose in PoolPurpose.values:
        prefixes = [row.prefix for row in rows if row.purpose == purpose]
        assert len(prefixes) == len(boxes) and len(set(prefixes)) == len(boxes), purpose
    placed = list(Box.objects.filter(pk__in=[b.pk for b in boxes]).values_list("server_id", "tunnel_port"))
    assert len(set(placed)) == len(boxes) and all(port for _, port in placed)
    secrets = [
        secret_decrypt(c.secret_ciphertext)
        for c in TunnelCredential.objects.filter(box__in=boxes, revoked_at=None)
    ]
    assert len(secrets) == 3 * len(boxes) and len(set(secrets)) == len(secrets)


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("server_count", [1, 4])
def test_32_concurrent_claims_fill_exactly_sized_pools_then_the_33rd_conflicts(
    org, region, make_server, make_pools, make_box, server_count
):
    # given servers with room for 40 boxes in all (one, or four sharing the region's pools, so the
    # pool locks alone must keep them apart) and pools sized for exactly 32 boxes (public IPv4: the
    # 30 host addresses of a /27 and both addresses of a /31)
    servers = [make_server(region, capacity=40 // server_count)[0] for _ in range(server_count)]
    pools = make_pools(region=region, public="203.0.113.0/27", tunnel="100.64.0.0/26", ipv6="2001:db8::/51")
    pool_create(
        actor=Actor.system("test"),
        name="public-small",
        cidr="192.0.2.0/31",
        purpose="public_ipv4",
        region=region,
    )
    boxes = [make_box() for _ in range(32)]

    # when 32 organisations' claims run at the same time on 32 connections
    results = _claim_concurrently(org, boxes)

    # then all succeed with distinct addresses, ports and credentials
    failures = [r for r in results if isinstance(r, Exception)]
    assert failures == []
    _assert_all_distinct(boxes)
    assert sum(AggregationServer.objects.values_list("assigned_boxes", flat=True)) == 32
    if server_count > 1:
        assert Box.objects.filter(server__isnull=False).values("server").distinct().count() > 1

    # and when a 33rd box is claimed, it conflicts naming the pool and assigns nothing
    extra = make_box()
    before = (AddressAssignment.objects.count(), TunnelCredential.objects.count())
    with pytest.raises(Conflict) as conflict:
        box_claim(actor=Actor.system("test"), organization=org, serial=extra.serial, claim_code=CLAIM_CODE)
    assert conflict.value.code == "pool_exhausted" and conflict.value.field == "public_ipv4"
    assert (
        pools[PoolPurpose.PUBLIC_IPV4].name in conflict.value.message
        and "public-small" in conflict.value.message
    )
    assert (AddressAssignment.objects.count(), TunnelCredential.objects.count()) == before
    assert sum(AggregationServer.objects.values_list("assigned_boxes", flat=True)) == 32
    assert all(
        s.assigned_boxes <= s.capacity
        for s in AggregationServer.objects.filter(pk__in=[x.pk for x in servers])
    )
    extra.refresh_from_db()
    assert extra.state == BoxState.UNCLAIMED and extra.server_id is None


@pytest.mark.django_db(transaction=True)
def test_concurrent_claims_on_a_30_get_only_its_two_host_addresses(
    org, region, make_server, make_pools, make_box
):
    # given a public IPv4 pool of 4 addresses: network .0, hosts .1 and .2, broadcast .3
    make_server(region, capacity=10)
    make_pools(region=region, public="198.51.100.0/30")
    boxes = [make_box() for _ in range(3)]

    # when three claims race for it
    results = _claim_concurrently(org, boxes)

    # then two get the two host addresses and the third finds the pool exhausted
    failures = [r for r in results if isinstance(r, Exception)]
    assert len(failures) == 1 and isinstance(failures[0], Conflict), failures
    assert failures[0].code == "pool_exhausted" and failures[0].field == "public_ipv4"
    public = AddressAssignment.objects.filter(purpose=PoolPurpose.PUBLIC_IPV4, state=AssignmentState.ACTIVE)
    assert sorted(public.values_list("prefix", flat=True)) == ["198.51.100.1/32", "198.51.100.2/32"]


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("cidr", "handed_out"),
    [
        ("198.51.100.0/29", [f"198.51.100.{host}/32" for host in range(1, 7)]),
        ("198.51.100.0/30", ["198.51.100.1/32", "198.51.100.2/32"]),
        ("198.51.100.0/31", ["198.51.100.0/32", "198.51.100.1/32"]),  # point-to-point: both usable
        ("198.51.100.7/32", ["198.51.100.7/32"]),
    ],
)
def test_a_public_pool_hands_out_exactly_its_usable_addresses_and_says_so(
    org, region, make_server, make_pools, make_box, cidr, handed_out
):
    # given a public IPv4 pool
    make_server(region, capacity=20)
    pool = make_pools(region=region, public=cidr)[PoolPurpose.PUBLIC_IPV4]
    assert pool_utilisation(pools_with_utilisation().get(pk=pool.pk))["size"] == len(handed_out)

    # when boxes are claimed until it is exhausted
    claimed: list[str] = []
    while True:
        try:
            box = box_claim(
                actor=Actor.system("test"), organization=org, serial=make_box().serial, claim_code=CLAIM_CODE
            )
        except Conflict as exhausted:
            assert exhausted.code == "pool_exhausted" and exhausted.field == "public_ipv4"
            break
        claimed.append(box.public_ipv4)  # type: ignore[attr-defined]

    # then it handed out its usable addresses, lowest first, and counts itself full
    assert [f"{address}/32" for address in claimed] == handed_out
    assert pool_utilisation(pools_with_utilisation().get(pk=pool.pk)) == {
        "size": len(handed_out),
        "active": len(handed_out),
        "quarantined": 0,
        "free": 0,
    }


@pytest.mark.django_db
def test_a_released_host_address_is_reused_but_never_the_network_address(
    org, region, make_server, make_pools, make_box
):
    # given a /30 whose two host addresses are taken, one of them released and out of quarantine
    make_server(region, capacity=10)
    make_pools(region=region, public="198.51.100.0/30")
    first, second = (
        box_claim(
            actor=Actor.system("test"), organization=org, serial=make_box().serial, claim_code=CLAIM_CODE
        )
        for _ in range(2)
    )
    box_unclaim(actor=Actor.system("test"), box=first)
    addresses_release_quarantined(now=timezone.now() + timedelta(days=30))

    # when another box is claimed, it gets the freed host address (.1), not .0
    third = box_claim(
        actor=Actor.system("test"), organization=org, serial=make_box().serial, claim_code=CLAIM_CODE
    )
    assert third.public_ipv4 == "198.51.100.1"  # type: ignore[attr-defined]
    assert second.public_ipv4 == "198.51.100.2"  # type: ignore[attr-defined]


@pytest.mark.django_db(transaction=True)
def test_33_concurrent_claims_on_a_server_for_32_leave_exactly_one_out(
    org, region, make_server, make_pools, make_box
):
    # given a server with capacity 32 and roomier pools
    server, _ = make_server(region, capacity=32)
    make_pools(region=region, public="203.0.113.0/26", tunnel="100.64.0.0/25", ipv6="2001:db8::/50")
    boxes = [make_box() for _ in range(33)]

    # when 33 claims race
    results = _claim_concurrently(org, boxes)

    # then 32 succeed, distinct; the one left out got no_server_capacity and holds nothing
    failures = [r for r in results if isinstance(r, Exception)]
    assert len(failures) == 1, failures
    assert isinstance(failures[0], Conflict) and failures[0].code == "no_server_capacity"
    assert failures[0].field == "server"
    claimed = [box for box, r in zip(boxes, results, strict=True) if not isinstance(r, Exception)]
    _assert_all_distinct(claimed)
    loser = next(box for box, r in zip(boxes, results, strict=True) if isinstance(r, Exception))
    loser.refresh_from_db()
    assert loser.state == BoxState.UNCLAIMED and loser.server_id is None
    assert not AddressAssignment.objects.filter(box=loser).exists()
    assert AggregationServer.objects.get(pk=server.pk).assigned_boxes == 32
