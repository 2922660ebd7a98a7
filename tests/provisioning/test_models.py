"""Database-level invariants: they hold even when the services are bypassed."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from django.db import IntegrityError, connection, transaction

from fleet.core.models import AgentCredential, Box
from fleet.core.tokens import digest
from provisioning.choices import AssignmentState, PoolPurpose
from provisioning.models import AddressAssignment, AddressPool, AggregationServer, TunnelCredential

pytestmark = pytest.mark.django_db


def _raises_integrity(action: Callable[[], object]) -> None:
    with pytest.raises(IntegrityError), transaction.atomic():
        action()


def _assignment(pool: AddressPool, box: Box, index: int, prefix: str, **fields: Any) -> AddressAssignment:
    return AddressAssignment.objects.create(
        pool=pool, box=box, purpose=pool.purpose, index=index, prefix=prefix, **fields
    )


def test_duplicate_or_overlapping_assignments_are_refused(provisioned, make_box):
    # given one assignment of 100.64.0.0/31 in the tunnel pool
    pool = provisioned["pools"][PoolPurpose.TUNNEL_P2P]
    first, second = make_box(), make_box()
    _assignment(pool, first, 0, "100.64.0.0/31")

    # then the same index, the same prefix, or an overlapping prefix is refused by the database
    _raises_integrity(lambda: _assignment(pool, second, 0, "100.64.0.2/31"))
    _raises_integrity(lambda: _assignment(pool, second, 1, "100.64.0.0/31"))
    _raises_integrity(lambda: _assignment(pool, second, 1, "100.64.0.1/32"))
    _raises_integrity(lambda: _assignment(pool, second, 1, "100.64.0.0/30"))

    # and raw SQL cannot sneak one in either
    def raw_overlap() -> None:
        with connection.cursor() as cursor:
            cursor.execute(
                "INSERT INTO provisioning_addressassignment "
                "(id, pool_id, box_id, purpose, index, prefix, state, assigned_at) "
                "VALUES (gen_random_uuid(), %s, %s, 'tunnel_p2p', 7, '100.64.0.0/24', 'active', now())",
                [pool.pk, second.pk],
            )

    _raises_integrity(raw_overlap)


def test_a_quarantined_prefix_still_blocks_reuse_and_one_active_per_purpose(provisioned, make_box):
    pool = provisioned["pools"][PoolPurpose.PUBLIC_IPV4]
    box, other = make_box(), make_box()
    _assignment(
        pool,
        box,
        0,
        "203.0.113.0/32",
        state=AssignmentState.QUARANTINED,
        quarantine_until="2999-01-01T00:00:00Z",
    )
    _raises_integrity(lambda: _assignment(pool, other, 5, "203.0.113.0/32"))
    _assignment(pool, box, 1, "203.0.113.1/32")
    _raises_integrity(lambda: _assignment(pool, box, 2, "203.0.113.2/32"))


def test_overlapping_pools_are_refused(provisioned, region):
    _raises_integrity(
        lambda: AddressPool.objects.create(
            name="dup",
            cidr="203.0.113.16/28",
            purpose=PoolPurpose.PUBLIC_IPV4,
            prefix_length=32,
            region=region,
        )
    )


def test_assigned_boxes_cannot_exceed_capacity(provisioned):
    server = provisioned["server"]
    _raises_integrity(
        lambda: AggregationServer.objects.filter(pk=server.pk).update(assigned_boxes=server.capacity + 1)
    )


def test_one_live_tunnel_credential_per_kind_and_one_live_agent_credential(make_box):
    box = make_box()
    TunnelCredential.objects.create(box=box, kind="glorytun", secret_ciphertext="x")
    _raises_integrity(
        lambda: TunnelCredential.objects.create(box=box, kind="glorytun", secret_ciphertext="y")
    )
    AgentCredential.objects.create(box=box, token_hash=digest("a"))
    _raises_integrity(lambda: AgentCredential.objects.create(box=box, token_hash=digest("b")))
