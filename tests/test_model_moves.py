"""Models that moved between apps keep their data: the box timeline (Event, monitoring -> fleet) and
regions (provisioning -> fleet). A database holding rows of the schema before the moves is migrated
forward; every row is still there, through the new models, and placement still works on it."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from django.contrib.contenttypes.models import ContentType
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.utils import timezone

from fleet.core.audit import Actor
from fleet.core.models import Box, Event, Organization, Region
from fleet.core.tokens import box_secret_digest
from provisioning.models import AddressPool, AggregationServer
from provisioning.services.lifecycle import box_claim

BEFORE = [
    ("fleet", "0002_initial"),
    ("monitoring", "0002_event_ts_index"),
    ("provisioning", "0004_place_box_region"),
]


def _table_exists(name: str) -> bool:
    with connection.cursor() as cursor:
        cursor.execute("SELECT to_regclass(%s)", [name])
        return cursor.fetchone()[0] is not None


@pytest.fixture
def executor() -> Iterator[MigrationExecutor]:
    executor = MigrationExecutor(connection)
    leaves = executor.loader.graph.leaf_nodes()
    try:
        yield executor
    finally:
        executor = MigrationExecutor(connection)
        executor.migrate(leaves)


@pytest.mark.django_db(transaction=True)
def test_events_and_regions_keep_their_rows_across_the_move(executor: MigrationExecutor) -> None:
    # given a database at the schema before the moves, holding a region, an organisation preferring it,
    # a server with pools in it, a box and two timeline events
    executor.migrate(BEFORE)
    old = executor.loader.project_state(BEFORE).apps
    assert _table_exists("provisioning_region") and _table_exists("monitoring_event")
    region = old.get_model("provisioning", "Region").objects.create(code="eu-west", name="Europe West")
    organization = old.get_model("fleet", "Organization").objects.create(
        name="Acme", slug="acme", preferred_region_id=region.pk
    )
    server = old.get_model("provisioning", "AggregationServer").objects.create(
        name="agg-1",
        region_id=region.pk,
        hostname="agg-1.example.net",
        public_ipv4="192.0.2.10",
        tunnel_port_min=51820,
        tunnel_port_max=51829,
        free_port_hint=51820,
        capacity=10,
        token_hash="t" * 64,
    )
    pool_model = old.get_model("provisioning", "AddressPool")
    for name, cidr, purpose, length in (
        ("v4", "198.51.100.0/28", "public_ipv4", 32),
        ("p2p", "10.200.0.0/28", "tunnel_p2p", 31),
        ("v6", "2001:db8:100::/48", "ipv6_prefix", 56),
    ):
        pool_model.objects.create(
            name=name, cidr=cidr, purpose=purpose, prefix_length=length, region_id=region.pk
        )
    box = old.get_model("fleet", "Box").objects.create(
        serial="MOVE-0001", claim_code_hash=box_secret_digest("MOVE-0001", "claim-code-0001")
    )
    event_model = old.get_model("monitoring", "Event")
    now = timezone.now()
    events = [
        event_model.objects.create(id=uuid.uuid4(), box_id=box.pk, kind=kind, ts=now, data={"n": n})
        for n, kind in enumerate(("session_opened", "wan_down"))
    ]

    # when the database is migrated forward
    executor.loader.build_graph()
    executor.migrate(executor.loader.graph.leaf_nodes())

    # then the rows are in the new models, the tables renamed, the content types moved
    assert _table_exists("fleet_region") and not _table_exists("provisioning_region")
    assert _table_exists("fleet_event") and not _table_exists("monitoring_event")
    assert Region.objects.get(pk=region.pk).code == "eu-west"
    assert Organization.objects.get(pk=organization.pk).preferred_region_id == region.pk
    assert AggregationServer.objects.get(pk=server.pk).region.code == "eu-west"
    assert AddressPool.objects.filter(region_id=region.pk).count() == 3
    moved = {event.pk: event for event in Event.objects.filter(box_id=box.pk)}
    assert set(moved) == {event.pk for event in events}
    assert {event.kind for event in moved.values()} == {"session_opened", "wan_down"}
    assert ContentType.objects.filter(app_label="fleet", model__in=["event", "region"]).count() == 2
    assert not ContentType.objects.filter(
        app_label__in=["monitoring", "provisioning"], model__in=["event", "region"]
    )
    # and placement (server-side functions reading the renamed region table) works on the moved rows
    claimed = box_claim(
        actor=Actor.system("test"),
        organization=Organization.objects.get(pk=organization.pk),
        serial="MOVE-0001",
        claim_code="claim-code-0001",
    )
    assert claimed.server_id == server.pk
    assert Box.objects.get(pk=box.pk).state == "claimed"


@pytest.mark.django_db(transaction=True)
def test_the_moves_reverse(executor: MigrationExecutor) -> None:
    # given the current schema with a region and an event
    region = Region.objects.create(code="us-east", name="US East")
    box = Box.objects.create(serial="MOVE-0002")
    Event.objects.create(box=box, kind="box_online", ts=timezone.now())
    # when migrated back to before the moves
    executor.migrate(BEFORE)
    old: Any = executor.loader.project_state(BEFORE).apps
    # then the rows are back in the old tables
    assert _table_exists("provisioning_region") and _table_exists("monitoring_event")
    assert old.get_model("provisioning", "Region").objects.get(pk=region.pk).code == "us-east"
    assert old.get_model("monitoring", "Event").objects.filter(box_id=box.pk).count() == 1
