"""Shared fixtures for the whole suite: people and organisations with every role, imported boxes,
personal API tokens, agent tokens, and a provisioned region (server + pools).

Everything runs against the real PostgreSQL and Redis of the environment (DATABASE_URL, REDIS_URL).
Fixtures are additive and generic: app-level conftest files may override a name for their own tests.
"""

from __future__ import annotations

import io
import itertools
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypedDict

import pytest
from django.contrib.auth import get_user_model
from django.core.cache import cache
from django.core.management import call_command
from django.http import HttpResponseBase, StreamingHttpResponse
from django.test import Client
from rest_framework.test import APIClient

from fleet.core import events, throttling
from fleet.core.audit import Actor
from fleet.core.choices import BoxState, Role
from fleet.core.models import AgentCredential, Box, Membership, Organization
from fleet.core.tokens import TokenKind, box_secret_digest, token_issue

PASSWORD = "pw-test-12345"
FACTORY_SECRET = "factory-secret-1"
CLAIM_CODE = "claim-code-0001"
# A valid WireGuard public key (base64 of 32 bytes).
WG_KEY = "aGVsbG8td29ybGQtdGhpcy1pcy0zMi1ieXRlcy0hISE="

_sequence = itertools.count(1)


class Bearer(TypedDict):
    HTTP_AUTHORIZATION: str


def bearer(token: str) -> Bearer:
    """The test client's keyword for an ``Authorization: Bearer`` header (agent or personal token)."""
    return {"HTTP_AUTHORIZATION": f"Bearer {token}"}


def management_command_run(*args: Any) -> tuple[int, str]:
    """Run a management command: (its exit status, what it wrote to stdout)."""
    out = io.StringIO()
    try:
        call_command(*args, stdout=out, stderr=io.StringIO())
    except SystemExit as exc:
        return int(exc.code or 0), out.getvalue()
    return 0, out.getvalue()


def streamed_body(response: HttpResponseBase) -> bytes:
    """The whole body of a streaming response (the test client's are plain iterators)."""
    assert isinstance(response, StreamingHttpResponse), type(response)
    content = response.streaming_content
    assert isinstance(content, Iterator), type(content)
    return b"".join(content)


@pytest.fixture(autouse=True)
def _throttle_counters_reset() -> Any:
    """Failure counters live in Redis, outside the test transaction: start every test at zero."""

    def wipe() -> None:
        client = cache._cache.get_client()  # type: ignore[attr-defined]
        for pattern in ("*:throttle:*",):
            keys = list(client.scan_iter(match=pattern, count=1000))
            if keys:
                client.delete(*keys)

    wipe()
    yield
    wipe()


@dataclass
class SettableClock:
    """A clock for ``fleet.core.throttling``: windows move when a test says so, never by sleeping."""

    now: float

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def throttle_clock(monkeypatch: pytest.MonkeyPatch) -> SettableClock:
    clock = SettableClock(now=time.time())
    monkeypatch.setattr(throttling, "clock", clock)
    return clock


@pytest.fixture
def queued_event_tasks(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, tuple[Any, ...]]]:
    """The tasks ``fleet.core.events`` queues after commit, as (name, args), instead of the broker."""
    calls: list[tuple[str, tuple[Any, ...]]] = []

    def record(name: str, *args: Any) -> bool:
        calls.append((name, args))
        return True

    monkeypatch.setattr(events, "task_queue", record)
    return calls


@pytest.fixture
def system_actor() -> Actor:
    return Actor.system("test")


@pytest.fixture
def api_client() -> APIClient:
    return APIClient()


@pytest.fixture
def user_factory(db: Any) -> Callable[..., Any]:
    """make_user(email=None, *, password=PASSWORD, is_staff=False, is_superuser=False)."""

    def make(
        email: str | None = None,
        *,
        password: str = PASSWORD,
        is_staff: bool = False,
        is_superuser: bool = False,
    ) -> Any:
        email = email or f"user{next(_sequence)}@example.com"
        return get_user_model().objects.create_user(
            username=email, email=email, password=password, is_staff=is_staff, is_superuser=is_superuser
        )

    return make


@pytest.fixture
def superuser_client(user_factory: Callable[..., Any]) -> Client:
    """The Django test client logged in as a superuser (root@example.com), for the admin."""
    client = Client()
    client.force_login(user_factory("root@example.com", is_staff=True, is_superuser=True))
    return client


@pytest.fixture
def organization_factory(db: Any) -> Callable[..., Organization]:
    """make_org(name=None, *, owner=None, preferred_region=None): an organisation (and its owner)."""

    def make(name: str | None = None, *, owner: Any = None, preferred_region: Any = None) -> Organization:
        index = next(_sequence)
        name = name or f"Organization {index}"
        organization = Organization.objects.create(
            name=name, slug=f"org-{index}", preferred_region=preferred_region
        )
        if owner is not None:
            Membership.objects.create(user=owner, organization=organization, role=Role.OWNER)
        return organization

    return make


@dataclass
class People:
    """An organisation with an owner, an admin and a viewer; a second organisation whose owner is
    the ``outsider``; and a support staff user who is a member of neither."""

    org: Organization
    other_org: Organization
    owner: Any
    admin: Any
    viewer: Any
    outsider: Any
    staff: Any

    def by_role(self, name: str) -> Any:
        return getattr(self, name)


@pytest.fixture
def people(user_factory: Callable[..., Any], organization_factory: Callable[..., Organization]) -> People:
    owner = user_factory("owner@example.com")
    admin = user_factory("admin@example.com")
    viewer = user_factory("viewer@example.com")
    outsider = user_factory("outsider@example.com")
    staff = user_factory("staff@example.com", is_staff=True)
    org = organization_factory("Acme", owner=owner)
    Membership.objects.create(user=admin, organization=org, role=Role.ADMIN)
    Membership.objects.create(user=viewer, organization=org, role=Role.VIEWER)
    other_org = organization_factory("Globex", owner=outsider)
    return People(
        org=org, other_org=other_org, owner=owner, admin=admin, viewer=viewer, outsider=outsider, staff=staff
    )


@pytest.fixture
def client_for() -> Callable[[Any], APIClient]:
    """client_for(user) -> an APIClient logged in with a session (None: anonymous)."""

    def make(user: Any) -> APIClient:
        client = APIClient()
        if user is not None:
            client.force_login(user)
        return client

    return make


@pytest.fixture
def box_factory(db: Any) -> Callable[..., Box]:
    """make_box(serial=None, *, factory_secret=FACTORY_SECRET, claim_code=CLAIM_CODE, organization=None,
    **fields): an imported box; with ``organization`` it is bound (claimed) without provisioning."""

    def make(
        serial: str | None = None,
        *,
        factory_secret: str = FACTORY_SECRET,
        claim_code: str = CLAIM_CODE,
        organization: Organization | None = None,
        **fields: Any,
    ) -> Box:
        index = next(_sequence)
        serial = serial or f"TEST-{index:06d}"
        fields.setdefault("model", "OTB-v2c")
        fields.setdefault("mac", f"02:00:00:{index >> 16 & 255:02x}:{index >> 8 & 255:02x}:{index & 255:02x}")
        if organization is not None:
            fields.setdefault("state", BoxState.CLAIMED)
        return Box.objects.create(
            serial=serial,
            factory_secret_hash=box_secret_digest(serial, factory_secret),
            claim_code_hash=box_secret_digest(serial, claim_code),
            organization=organization,
            **fields,
        )

    return make


@pytest.fixture
def agent_token_factory(db: Any) -> Callable[[Box], str]:
    """agent_token(box) -> a live agent token for the box (any previous one revoked)."""

    def make(box: Box) -> str:
        from django.utils import timezone

        AgentCredential.objects.filter(box=box, revoked_at__isnull=True).update(revoked_at=timezone.now())
        issued = token_issue(TokenKind.AGENT)
        AgentCredential.objects.create(box=box, token_hash=issued.digest)
        return issued.value

    return make


@pytest.fixture
def api_token_factory(db: Any) -> Callable[..., str]:
    """api_token(user, organization, days=30) -> a personal API token value."""

    def make(user: Any, organization: Organization, days: int = 30) -> str:
        from fleet.core.services import api_token_create

        _, value = api_token_create(
            actor=Actor.system("test"),
            user=user,
            organization=organization,
            name="test",
            expires_in_days=days,
        )
        return value

    return make


@dataclass
class ProvisionedRegion:
    region: Any
    server: Any
    server_token: str
    pools: dict[str, Any]


@pytest.fixture
def provisioned_region_factory(db: Any) -> Callable[..., ProvisionedRegion]:
    """make(code="eu-west", capacity=200, public="203.0.113.0/26", tunnel="100.64.0.0/24",
    ipv6="2001:db8::/44"): a region with one active server and region pools, via provisioning services."""

    def make(
        code: str | None = None,
        *,
        capacity: int = 200,
        public: str = "203.0.113.0/26",
        tunnel: str = "100.64.0.0/24",
        ipv6: str = "2001:db8::/44",
    ) -> ProvisionedRegion:
        from provisioning.services.infrastructure import pool_create, region_create, server_create

        index = next(_sequence)
        actor = Actor.system("test")
        region = region_create(actor=actor, code=code or f"region-{index}", name=f"Region {index}")
        server, token = server_create(
            actor=actor,
            name=f"agg-{index}",
            region=region,
            hostname=f"agg-{index}.example.net",
            public_ipv4=f"192.0.2.{index % 250 + 1}",
            tunnel_port_min=51820,
            tunnel_port_max=51820 + capacity + 99,
            capacity=capacity,
            wg_public_key=WG_KEY,
        )
        pools = {
            purpose: pool_create(
                actor=actor, name=f"{purpose}-{index}", cidr=cidr, purpose=purpose, region=region
            )
            for purpose, cidr in (("public_ipv4", public), ("tunnel_p2p", tunnel), ("ipv6_prefix", ipv6))
        }
        return ProvisionedRegion(region=region, server=server, server_token=token, pools=pools)

    return make


@pytest.fixture
def provisioned_region(provisioned_region_factory: Callable[..., ProvisionedRegion]) -> ProvisionedRegion:
    return provisioned_region_factory("eu-west")


@pytest.fixture
def claimed_box_factory(
    box_factory: Callable[..., Box], provisioned_region: ProvisionedRegion
) -> Callable[..., Box]:
    """make(organization, serial=None) -> an imported box claimed and provisioned into the organisation
    through the provisioning service (server, addresses, tunnel credentials, config hash)."""

    def make(organization: Organization, serial: str | None = None, **fields: Any) -> Box:
        from provisioning.services.lifecycle import box_claim

        box = box_factory(serial, **fields)
        return box_claim(
            actor=Actor.system("test"), organization=organization, serial=box.serial, claim_code=CLAIM_CODE
        )

    return make
