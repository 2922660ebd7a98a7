"""Aggregation servers and address pools (provisioning.services.infrastructure): validation naming the
field, box hashes refreshed on a server change, token rotation, pool defaults and owner."""

from __future__ import annotations

import pytest

from fleet.core.errors import InvalidInput
from fleet.core.models import AuditLog, Box, Region
from fleet.core.tokens import digest
from provisioning.choices import PoolPurpose
from provisioning.models import AggregationServer
from provisioning.services.infrastructure import pool_create, server_rotate_token, server_update
from tests.provisioning.test_lifecycle import _claim, _server

pytestmark = pytest.mark.django_db


def test_server_update_validates_and_refreshes_box_hashes(actor, org, provisioned, make_box):
    server = provisioned["server"]
    box = _claim(actor, org, make_box())
    old_hash = Box.objects.get(pk=box.pk).config_hash

    with pytest.raises(InvalidInput) as low:
        server_update(actor=actor, server=server, capacity=0)
    assert low.value.field == "capacity"
    with pytest.raises(InvalidInput) as ports:
        server_update(actor=actor, server=server, tunnel_port_min=51821)
    assert ports.value.field == "tunnel_port_min"
    with pytest.raises(InvalidInput) as unknown:
        server_update(actor=actor, server=server, assigned_boxes=0)
    assert unknown.value.field == "assigned_boxes"

    server_update(actor=actor, server=server, hostname="new-host.example.net")
    assert Box.objects.get(pk=box.pk).config_hash != old_hash
    entry = AuditLog.objects.filter(action="server.update").latest("created_at")
    assert entry.before is not None and entry.after is not None
    assert entry.before["hostname"] != entry.after["hostname"] == "new-host.example.net"


def test_server_token_rotation_replaces_the_digest(actor, provisioned):
    server = provisioned["server"]
    old = provisioned["token"]
    assert old.startswith("otbs_") and _server(server.pk).token_hash == digest(old)
    new = server_rotate_token(actor=actor, server=server)
    assert new.startswith("otbs_") and new != old
    assert _server(server.pk).token_hash == digest(new)


def test_server_create_rejects_bad_input(actor, region, make_server):
    with pytest.raises(InvalidInput) as bad_ip:
        make_server(region, public_ipv4="300.1.1.1")
    assert bad_ip.value.field == "public_ipv4"
    with pytest.raises(InvalidInput) as too_big:
        make_server(region, capacity=10, tunnel_port_min=50000, tunnel_port_max=50004)
    assert too_big.value.field == "capacity"
    assert not AggregationServer.objects.exists()


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"cidr": "not-a-network", "purpose": "public_ipv4"}, "cidr"),
        ({"cidr": "10.0.0.1/24", "purpose": "public_ipv4"}, "cidr"),
        ({"cidr": "2001:db8::/48", "purpose": "public_ipv4"}, "cidr"),
        ({"cidr": "10.0.0.0/24", "purpose": "ipv6_prefix"}, "cidr"),
        ({"cidr": "10.0.0.0/24", "purpose": "public_ipv4", "prefix_length": 31}, "prefix_length"),
        ({"cidr": "2001:db8::/60", "purpose": "ipv6_prefix", "prefix_length": 56}, "prefix_length"),
        ({"cidr": "2001:db8::/48", "purpose": "ipv6_prefix", "prefix_length": 80}, "prefix_length"),
        ({"cidr": "10.0.0.0/24", "purpose": "tunnel_p2p", "prefix_length": 28}, "prefix_length"),
        ({"cidr": "10.0.0.0/24", "purpose": "bogus"}, "purpose"),
        ({"cidr": "203.0.113.0/24", "purpose": "public_ipv4"}, "cidr"),  # overlaps the fixture pool
    ],
)
def test_pool_create_rejects_bad_input_naming_the_field(actor, provisioned, region, kwargs, field):
    with pytest.raises(InvalidInput) as error:
        pool_create(actor=actor, name="new", region=region, **kwargs)
    assert error.value.field == field
    assert not provisioned["pools"][PoolPurpose.PUBLIC_IPV4].__class__.objects.filter(name="new").exists()


def test_pool_create_defaults_and_needs_exactly_one_owner(actor, region, provisioned):
    tunnel6 = pool_create(actor=actor, name="t6", cidr="fd00::/120", purpose="tunnel_p2p", region=region)
    v6 = pool_create(actor=actor, name="v6b", cidr="2001:db8:8000::/48", purpose="ipv6_prefix", region=region)
    assert tunnel6.prefix_length == 127 and v6.prefix_length == 56
    with pytest.raises(InvalidInput) as neither:
        pool_create(actor=actor, name="x", cidr="10.9.0.0/24", purpose="tunnel_p2p")
    assert neither.value.field == "region"
    with pytest.raises(InvalidInput) as both:
        pool_create(
            actor=actor,
            name="x",
            cidr="10.9.0.0/24",
            purpose="tunnel_p2p",
            region=region,
            server=provisioned["server"],
        )
    assert both.value.field == "region"
    assert Region.objects.count() == 1
