"""The allocation engine under real concurrency: claims on separate database connections."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from django.db import connection

from fleet.core.audit import Actor
from fleet.core.choices import BoxState
from fleet.core.errors import Conflict
from fleet.core.models import Box
from provisioning.choices import AssignmentState, PoolPurpose
from provisioning.models import AddressAssignment, AggregationServer, TunnelCredential
from provisioning.secrets import secret_decrypt
from provisioning.services.lifecycle import box_claim
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
    # pool locks alone must keep them apart) and pools sized for exactly 32 boxes
    servers = [make_server(region, capacity=40 // server_count)[0] for _ in range(server_count)]
    pools = make_pools(region=region, public="203.0.113.0/27", tunnel="100.64.0.0/26", ipv6="2001:db8::/51")
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
    assert pools[PoolPurpose.PUBLIC_IPV4].name in conflict.value.message
    assert (AddressAssignment.objects.count(), TunnelCredential.objects.count()) == before
    assert sum(AggregationServer.objects.values_list("assigned_boxes", flat=True)) == 32
    assert all(
        s.assigned_boxes <= s.capacity
        for s in AggregationServer.objects.filter(pk__in=[x.pk for x in servers])
    )
    extra.refresh_from_db()
    assert extra.state == BoxState.UNCLAIMED and extra.server_id is None


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
