"""Fixtures for provisioning tests: plain ORM rows and service calls, no factories of other apps."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.core.cache import cache

from fleet.core.audit import Actor
from fleet.core.choices import BoxState, Role
from fleet.core.models import Box, Membership, Organization, Region
from fleet.core.tokens import box_secret_digest
from provisioning.choices import PoolPurpose
from provisioning.models import AddressPool, AggregationServer
from provisioning.services.infrastructure import pool_create, region_create, server_create

CLAIM_CODE = "CLAIM-1234-5678"
_serials = itertools.count(1)
_names = itertools.count(1)


@pytest.fixture(autouse=True)
def _clean_cache() -> Any:
    cache.clear()
    yield
    cache.clear()


@pytest.fixture
def actor() -> Actor:
    return Actor.system("test")


@pytest.fixture
def staff_user(db: Any) -> Any:
    return get_user_model().objects.create_user("staff", "staff@example.com", "pw-staff-123", is_staff=True)


@pytest.fixture
def plain_user(db: Any) -> Any:
    return get_user_model().objects.create_user("alice", "alice@example.com", "pw-alice-123")


@pytest.fixture
def staff_actor(staff_user: Any) -> Actor:
    return Actor.for_user(staff_user)


@pytest.fixture
def make_org(db: Any) -> Callable[..., Organization]:
    def make(name: str | None = None, preferred_region: Region | None = None) -> Organization:
        name = name or f"Org {next(_names)}"
        return Organization.objects.create(
            name=name, slug=name.lower().replace(" ", "-"), preferred_region=preferred_region
        )

    return make


@pytest.fixture
def org(make_org: Callable[..., Organization], plain_user: Any) -> Organization:
    organization = make_org("Acme")
    Membership.objects.create(user=plain_user, organization=organization, role=Role.OWNER)
    return organization


@pytest.fixture
def region(db: Any) -> Region:
    return region_create(actor=Actor.system("test"), code="eu-west", name="EU West")


@pytest.fixture
def make_server(db: Any) -> Callable[..., tuple[AggregationServer, str]]:
    def make(
        region: Region, *, capacity: int = 100, name: str | None = None, **fields: Any
    ) -> tuple[AggregationServer, str]:
        index = next(_names)
        defaults: dict[str, Any] = {
            "hostname": f"agg{index}.example.net",
            "public_ipv4": f"198.51.100.{index % 250 + 1}",
            "tunnel_port_min": 51820,
            "tunnel_port_max": 51820 + max(capacity, 1) + 99,
            "wg_public_key": f"server-wg-key-{index}",
        }
        defaults.update(fields)
        return server_create(
            actor=Actor.system("test"),
            name=name or f"agg-{index}",
            region=region,
            capacity=capacity,
            **defaults,
        )

    return make


@pytest.fixture
def make_pools(db: Any) -> Callable[..., dict[str, AddressPool]]:
    """Pools for one region (or server): public IPv4, tunnel pairs and delegated IPv6 prefixes."""

    def make(
        *,
        region: Region | None = None,
        server: AggregationServer | None = None,
        public: str = "203.0.113.0/27",
        tunnel: str = "100.64.0.0/26",
        ipv6: str = "2001:db8::/51",
        tag: str = "",
    ) -> dict[str, AddressPool]:
        tag = tag or str(next(_names))
        actor = Actor.system("test")
        return {
            PoolPurpose.PUBLIC_IPV4: pool_create(
                actor=actor,
                name=f"public-{tag}",
                cidr=public,
                purpose="public_ipv4",
                region=region,
                server=server,
            ),
            PoolPurpose.TUNNEL_P2P: pool_create(
                actor=actor,
                name=f"tunnel-{tag}",
                cidr=tunnel,
                purpose="tunnel_p2p",
                region=region,
                server=server,
            ),
            PoolPurpose.IPV6_PREFIX: pool_create(
                actor=actor,
                name=f"ipv6-{tag}",
                cidr=ipv6,
                purpose="ipv6_prefix",
                region=region,
                server=server,
            ),
        }

    return make


@pytest.fixture
def make_box(db: Any) -> Callable[..., Box]:
    def make(serial: str | None = None, code: str = CLAIM_CODE, **fields: Any) -> Box:
        serial = serial or f"OTB{next(_serials):07d}"
        return Box.objects.create(
            serial=serial,
            claim_code_hash=box_secret_digest(serial, code),
            factory_secret_hash=box_secret_digest(serial, "factory-secret"),
            state=fields.pop("state", BoxState.UNCLAIMED),
            **fields,
        )

    return make


@pytest.fixture
def provisioned(region: Region, make_server: Any, make_pools: Any) -> dict[str, Any]:
    """A region with one active server (capacity 100) and region pools."""
    server, token = make_server(region, capacity=100)
    pools = make_pools(region=region)
    return {"server": server, "token": token, "pools": pools}
