"""The box lifecycle (provisioning.services.lifecycle): claim and its throttling, the choice of server
and pools, pool exhaustion, unclaim, transfer, decommission, reassignment, release."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.test import override_settings

from fleet.core.audit import Actor
from fleet.core.choices import BoxState, EventKind, Role
from fleet.core.errors import Conflict, InvalidInput, RateLimited
from fleet.core.events import EVENT_NOTICE_TASK
from fleet.core.models import AgentCredential, AuditLog, Box, Event, Membership
from fleet.core.request_context import request_id_var
from fleet.core.throttling import claim_failures_per_ip
from fleet.core.tokens import digest
from provisioning.choices import AssignmentState, PoolPurpose, ServerStatus
from provisioning.models import AddressAssignment, AggregationServer, TunnelCredential
from provisioning.selectors.configuration import box_config_document
from provisioning.services.infrastructure import pool_create, region_create, server_set_status
from provisioning.services.lifecycle import (
    box_claim,
    box_decommission,
    box_reassign_server,
    box_release_addresses,
    box_revoke_credentials,
    box_transfer,
    box_unclaim,
)
from tests.provisioning.conftest import CLAIM_CODE

pytestmark = pytest.mark.django_db


def _claim(actor: Actor, org: Any, box: Box, code: str = CLAIM_CODE) -> Box:
    return box_claim(actor=actor, organization=org, serial=box.serial, claim_code=code)


def _active(box: Box) -> dict[str, str]:
    return dict(
        AddressAssignment.objects.filter(box=box, state=AssignmentState.ACTIVE).values_list(
            "purpose", "prefix"
        )
    )


def _server(pk: Any) -> AggregationServer:
    return AggregationServer.objects.get(pk=pk)


# --- claim ----------------------------------------------------------------------------------------


def test_claim_binds_and_provisions_the_box(actor, org, provisioned, make_box):
    # given an unclaimed box and a region with one server and pools
    box = make_box()
    server = provisioned["server"]

    # when the organisation claims it with the right code
    claimed = _claim(actor, org, box)

    # then it is bound, placed on the server, and holds one address per purpose and live credentials
    box.refresh_from_db()
    assert claimed.pk == box.pk
    assert box.state == BoxState.CLAIMED and box.organization_id == org.pk and box.claimed_at
    assert box.server_id == server.pk and box.tunnel_port == server.tunnel_port_min
    assert _server(server.pk).assigned_boxes == 1
    assert _active(box) == {
        PoolPurpose.PUBLIC_IPV4: "203.0.113.1/32",  # .0 is the network address of the pool
        PoolPurpose.TUNNEL_P2P: "100.64.0.0/31",
        PoolPurpose.IPV6_PREFIX: "2001:db8::/56",
    }
    kinds = set(
        TunnelCredential.objects.filter(box=box, revoked_at__isnull=True).values_list("kind", flat=True)
    )
    assert kinds == {"wireguard", "glorytun", "shadowsocks"}
    # and the stored hash is the hash of the document the agent will fetch
    assert box.config_hash == box_config_document(box=box)["config_hash"]
    entry = AuditLog.objects.get(action="box.claim")
    assert entry.before is not None and entry.after is not None
    assert entry.box_id == box.pk and entry.organization_id == org.pk
    assert entry.after["state"] == "claimed" and entry.before["state"] == "unclaimed"


def test_claim_with_wrong_code_or_unknown_serial_gives_the_same_error(actor, org, provisioned, make_box):
    # given a box
    box = make_box()

    # when claiming with a wrong code, and with a serial that does not exist
    with pytest.raises(InvalidInput) as wrong:
        _claim(actor, org, box, code="nope")
    with pytest.raises(InvalidInput) as unknown:
        box_claim(actor=actor, organization=org, serial="NO-SUCH-SERIAL", claim_code=CLAIM_CODE)

    # then both say the same thing, naming claim_code, and nothing changed
    assert wrong.value.code == unknown.value.code == "invalid_claim_code"
    assert wrong.value.field == unknown.value.field == "claim_code"
    assert wrong.value.message == unknown.value.message
    box.refresh_from_db()
    assert box.state == BoxState.UNCLAIMED and box.server_id is None
    assert not AddressAssignment.objects.exists()


@override_settings(OTB={**settings.OTB, "CLAIM_MAX_FAILURES": 3, "AUTH_FAILURE_WINDOW_S": 600})
def test_repeated_claim_failures_are_rate_limited_even_with_the_right_code(actor, org, provisioned, make_box):
    # given three failed attempts on one serial
    box = make_box()
    for _ in range(3):
        with pytest.raises(InvalidInput):
            _claim(actor, org, box, code="guess")

    # when the right code is then tried
    with pytest.raises(RateLimited) as limited:
        _claim(actor, org, box)

    # then it is refused with a retry delay within the window, and the box stays unclaimed
    assert 0 < limited.value.retry_after_s <= 600
    assert "Try again in 10 minutes" in limited.value.message
    box.refresh_from_db()
    assert box.state == BoxState.UNCLAIMED


LIMITS = {
    **settings.OTB,
    "CLAIM_MAX_FAILURES": 3,
    "CLAIM_MAX_FAILURES_PER_IP": 30,
    "AUTH_FAILURE_WINDOW_S": 600,
}


def _admin_of(org: Any, source_ip: str) -> Actor:
    """A person who is admin of ``org``, acting from ``source_ip``."""
    user = get_user_model().objects.create_user(f"admin-{uuid.uuid4().hex[:8]}", password="pw-admin-1234")
    Membership.objects.create(user=user, organization=org, role=Role.ADMIN)
    return Actor.for_user(user, source_ip)


def intruder_org(actor: Actor) -> Any:
    """The one organisation of a person made by ``_admin_of``."""
    return actor.user.memberships.get().organization


@override_settings(OTB=LIMITS)
def test_the_rightful_owner_claims_after_another_organization_failed_on_the_serial(
    org, make_org, provisioned, make_box
):
    # given another organisation (from another address) failing five times on the box's serial
    box = make_box()
    intruder = _admin_of(make_org("Intruder"), "192.0.2.66")
    for _ in range(5):
        with pytest.raises((InvalidInput, RateLimited)):
            box_claim(
                actor=intruder, organization=intruder_org(intruder), serial=box.serial, claim_code="guess"
            )

    # when the organisation holding the claim code claims it
    claimed = box_claim(
        actor=_admin_of(org, "198.51.100.7"), organization=org, serial=box.serial, claim_code=CLAIM_CODE
    )

    # then it succeeds, while the intruder stays locked out of that serial
    assert claimed.state == BoxState.CLAIMED and claimed.organization_id == org.pk
    with pytest.raises(RateLimited):
        box_claim(
            actor=intruder, organization=intruder_org(intruder), serial=box.serial, claim_code=CLAIM_CODE
        )


@override_settings(OTB=LIMITS)
def test_failures_on_one_serial_do_not_block_the_organization_on_another(org, provisioned, make_box):
    # given the organisation locked out of serial A by its own failures
    admin = _admin_of(org, "198.51.100.7")
    box_a, box_b = make_box(), make_box()
    for _ in range(3):
        with pytest.raises(InvalidInput):
            box_claim(actor=admin, organization=org, serial=box_a.serial, claim_code="guess")
    with pytest.raises(RateLimited):
        box_claim(actor=admin, organization=org, serial=box_a.serial, claim_code=CLAIM_CODE)

    # when it claims serial B with the right code, then that works
    assert (
        box_claim(actor=admin, organization=org, serial=box_b.serial, claim_code=CLAIM_CODE).state
        == BoxState.CLAIMED
    )


@override_settings(OTB={**LIMITS, "CLAIM_MAX_FAILURES_PER_IP": 4})
def test_failures_from_one_address_are_limited_across_serials_and_organizations(
    org, make_org, provisioned, make_box
):
    # given four failures from one address, on four serials, for two organisations
    other = make_org("Other")
    here, there = _admin_of(org, "203.0.113.50"), _admin_of(other, "203.0.113.50")
    for index in range(4):
        actor, organization = (here, org) if index % 2 else (there, other)
        with pytest.raises(InvalidInput):
            box_claim(actor=actor, organization=organization, serial=make_box().serial, claim_code="guess")

    # when a fifth claim comes from that address, even with a right code, then it is refused
    box = make_box()
    with pytest.raises(RateLimited) as refused:
        box_claim(actor=here, organization=org, serial=box.serial, claim_code=CLAIM_CODE)
    assert "from your address" in refused.value.message and 0 < refused.value.retry_after_s <= 600

    # and from another address it goes through
    assert box_claim(
        actor=_admin_of(org, "203.0.113.51"), organization=org, serial=box.serial, claim_code=CLAIM_CODE
    )


@override_settings(OTB=LIMITS)
def test_a_lockout_ends_as_the_failures_leave_the_sliding_window(throttle_clock, org, provisioned, make_box):
    # given three failures on a serial, 100 s apart
    admin = _admin_of(org, "198.51.100.7")
    box = make_box()
    for _ in range(3):
        with pytest.raises(InvalidInput):
            box_claim(actor=admin, organization=org, serial=box.serial, claim_code="guess")
        throttle_clock.advance(100)

    # when the right code comes 599 s after the first failure, it is refused: wait 1 s more
    throttle_clock.advance(299)
    with pytest.raises(RateLimited) as refused:
        box_claim(actor=admin, organization=org, serial=box.serial, claim_code=CLAIM_CODE)
    assert refused.value.retry_after_s == 1
    assert refused.value.message == (
        "Too many failed claim attempts for this serial number. Try again in 1 second."
    )

    # then once the first failure left the window, it is checked (and a wrong one still counts)
    throttle_clock.advance(1)
    with pytest.raises(InvalidInput):
        box_claim(actor=admin, organization=org, serial=box.serial, claim_code="guess")
    with pytest.raises(RateLimited) as refused:
        box_claim(actor=admin, organization=org, serial=box.serial, claim_code=CLAIM_CODE)
    assert refused.value.retry_after_s == 100
    throttle_clock.advance(100)
    assert (
        box_claim(actor=admin, organization=org, serial=box.serial, claim_code=CLAIM_CODE).state
        == BoxState.CLAIMED
    )


@override_settings(OTB=LIMITS)
def test_a_serial_typed_in_another_case_counts_against_the_same_limit(org, provisioned, make_box):
    # given a box whose serial is printed in capitals
    make_box("DEMO-0011")
    admin = _admin_of(org, "198.51.100.7")

    # when it is typed in lower case with a wrong code three times, the lock is the same as for capitals
    for typed in ("demo-0011", "Demo-0011", "DEMO-0011"):
        with pytest.raises(InvalidInput):
            box_claim(actor=admin, organization=org, serial=typed, claim_code="guess")
    with pytest.raises(RateLimited):
        box_claim(actor=admin, organization=org, serial="demo-0011", claim_code=CLAIM_CODE)


@override_settings(OTB=LIMITS)
def test_a_serial_is_matched_ignoring_case(org, provisioned, make_box):
    # given a box whose serial is printed in capitals
    box = make_box("DEMO-0012")

    # when it is claimed with the serial typed in lower case and the right code
    claimed = box_claim(
        actor=_admin_of(org, "198.51.100.7"), organization=org, serial="demo-0012", claim_code=CLAIM_CODE
    )

    # then the box is claimed, recorded under its real serial, and nothing counted as a failure
    assert claimed.pk == box.pk and claimed.serial == "DEMO-0012" and claimed.state == BoxState.CLAIMED
    assert AuditLog.objects.get(action="box.claim").box_id == box.pk
    assert claim_failures_per_ip().count("198.51.100.7") == 0


def test_case_variants_of_a_serial_are_never_guessed_between(actor, org, provisioned, make_box):
    # given two boxes whose serials differ only in case (imported that way)
    upper, lower = make_box("EDGE-1", code="code-upper-1"), make_box("edge-1", code="code-lower-1")

    # when each is claimed by its exact serial, it is that box; a third spelling names neither
    assert _claim(actor, org, upper, code="code-upper-1").pk == upper.pk
    assert _claim(actor, org, lower, code="code-lower-1").pk == lower.pk
    for code in ("code-upper-1", "code-lower-1"):
        with pytest.raises(InvalidInput):
            box_claim(actor=actor, organization=org, serial="Edge-1", claim_code=code)


def test_claim_of_a_box_held_by_another_organization_conflicts(actor, org, make_org, provisioned, make_box):
    # given a box claimed by another organisation
    box = make_box()
    _claim(actor, make_org("Other"), box)

    # when org claims it, then it conflicts; the holder claiming again is a no-op
    with pytest.raises(Conflict) as conflict:
        _claim(actor, org, box)
    assert conflict.value.code == "already_claimed"
    holder = Box.objects.get(pk=box.pk).organization
    assert holder is not None
    assert _claim(actor, holder, box).organization_id == holder.pk
    assert AddressAssignment.objects.filter(box=box).count() == 3


def test_decommissioned_box_cannot_be_claimed(actor, org, provisioned, make_box):
    box = make_box()
    box_decommission(actor=actor, box=box)
    with pytest.raises(Conflict) as conflict:
        _claim(actor, org, box)
    assert conflict.value.code == "decommissioned"


# --- server choice --------------------------------------------------------------------------------


def test_preferred_region_wins_over_more_spare_capacity(actor, make_org, make_server, make_pools, make_box):
    # given a big server in one region and a small one in the organisation's preferred region
    west = region_create(actor=actor, code="west", name="West")
    east = region_create(actor=actor, code="east", name="East")
    big, _ = make_server(west, capacity=50)
    small, _ = make_server(east, capacity=2)
    make_pools(region=west)
    make_pools(region=east, public="192.0.2.0/27", tunnel="100.64.1.0/26", ipv6="2001:db8:1000::/51")
    org = make_org("Eastern", preferred_region=east)

    # when it claims three boxes
    boxes = [_claim(actor, org, make_box()) for _ in range(3)]

    # then the first two land in the preferred region, the third falls back to the other one
    assert [b.server_id for b in boxes] == [small.pk, small.pk, big.pk]
    assert _active(boxes[0])[PoolPurpose.PUBLIC_IPV4].startswith("192.0.2.")
    assert _active(boxes[2])[PoolPurpose.PUBLIC_IPV4].startswith("203.0.113.")


def test_most_spare_capacity_wins_and_draining_or_down_servers_get_nothing(
    actor, org, region, make_server, make_pools, make_box
):
    # given a large draining server, a large down server and two active ones
    draining, _ = make_server(region, capacity=100, status=ServerStatus.DRAINING)
    down, _ = make_server(region, capacity=100)
    server_set_status(actor=actor, server=down, status=ServerStatus.DOWN)
    small, _ = make_server(region, capacity=3)
    medium, _ = make_server(region, capacity=4)
    make_pools(region=region)

    # when four boxes are claimed
    placed = [_claim(actor, org, make_box()).server_id for _ in range(4)]

    # then the first goes to the server with most spare room, the load stays balanced after that,
    # and draining/down servers get nothing
    assert placed[0] == medium.pk
    spare = {s.pk: s.capacity - s.assigned_boxes for s in AggregationServer.objects.all()}
    assert abs(spare[medium.pk] - spare[small.pk]) <= 1 and spare[medium.pk] + spare[small.pk] == 3
    assert _server(draining.pk).assigned_boxes == 0 and _server(down.pk).assigned_boxes == 0


def test_server_tied_pool_is_used_before_the_region_pool(
    actor, org, region, make_server, make_pools, make_box
):
    # given region pools and a public pool tied to the server
    server, _ = make_server(region, capacity=10)
    make_pools(region=region)
    pool_create(actor=actor, name="server-public", cidr="192.0.2.64/30", purpose="public_ipv4", server=server)

    # when a box is claimed
    box = _claim(actor, org, make_box())

    # then its public address comes from the server's own pool
    assert _active(box)[PoolPurpose.PUBLIC_IPV4] == "192.0.2.65/32"  # its first host address


def test_no_active_server_gives_no_server_capacity(actor, org, region, make_server, make_pools, make_box):
    make_server(region, capacity=10, status=ServerStatus.DRAINING)
    make_pools(region=region)
    box = make_box()
    with pytest.raises(Conflict) as conflict:
        _claim(actor, org, box)
    assert conflict.value.code == "no_server_capacity" and conflict.value.field == "server"
    assert Box.objects.get(pk=box.pk).state == BoxState.UNCLAIMED


@pytest.mark.parametrize(
    ("pools", "field"),
    [
        ({"public": "203.0.113.0/32"}, "public_ipv4"),
        ({"tunnel": "100.64.0.0/31"}, "tunnel"),
        ({"ipv6": "2001:db8::/56"}, "ipv6_prefix"),
    ],
)
def test_pool_exhaustion_names_the_pool_and_assigns_nothing(
    actor, org, region, make_server, make_pools, make_box, pools, field
):
    # given pools where one purpose has room for a single box
    server, _ = make_server(region, capacity=10)
    created = make_pools(region=region, tag="x", **pools)
    _claim(actor, org, make_box())
    box = make_box()
    counts = (AddressAssignment.objects.count(), TunnelCredential.objects.count(), AuditLog.objects.count())

    # when a second box is claimed
    with pytest.raises(Conflict) as conflict:
        _claim(actor, org, box)

    # then the conflict names the exhausted purpose and pool, and nothing was half-assigned
    assert conflict.value.code == "pool_exhausted" and conflict.value.field == field
    purpose = {"public_ipv4": "public_ipv4", "tunnel": "tunnel_p2p", "ipv6_prefix": "ipv6_prefix"}[field]
    assert created[purpose].name in conflict.value.message
    assert (
        AddressAssignment.objects.count(),
        TunnelCredential.objects.count(),
        AuditLog.objects.count(),
    ) == counts
    assert _server(server.pk).assigned_boxes == 1
    box.refresh_from_db()
    assert box.state == BoxState.UNCLAIMED and box.server_id is None and box.organization_id is None


def test_missing_pool_for_a_purpose_is_reported(actor, org, region, make_server, make_box):
    make_server(region, capacity=10)
    pool_create(actor=actor, name="only-public", cidr="203.0.113.0/28", purpose="public_ipv4", region=region)
    with pytest.raises(Conflict) as conflict:
        _claim(actor, org, make_box())
    assert conflict.value.field in {"tunnel", "ipv6_prefix"}
    assert "no " in conflict.value.message and region.code in conflict.value.message


# --- lifecycle ------------------------------------------------------------------------------------


def test_unclaim_quarantines_revokes_and_frees_the_slot(actor, org, provisioned, make_box):
    # given a claimed box
    box = _claim(actor, org, make_box())
    held = _active(box)
    old_hash = Box.objects.get(pk=box.pk).config_hash
    token = request_id_var.set("req-unclaim-0001")

    # when it is unclaimed
    try:
        box_unclaim(actor=actor, box=box)
    finally:
        request_id_var.reset(token)

    # then its addresses are quarantined (still pointing at it), its credentials revoked, slot freed
    box.refresh_from_db()
    assert box.state == BoxState.UNCLAIMED and box.organization_id is None
    assert box.server_id is None and box.tunnel_port is None
    assert box.config_hash and box.config_hash != old_hash
    rows = AddressAssignment.objects.filter(box=box)
    assert {row.prefix for row in rows} == set(held.values())
    assert all(row.state == AssignmentState.QUARANTINED and row.quarantine_until for row in rows)
    assert not TunnelCredential.objects.filter(box=box, revoked_at__isnull=True).exists()
    assert _server(provisioned["server"].pk).assigned_boxes == 0
    entry = AuditLog.objects.get(action="box.unclaim")
    assert entry.before is not None and entry.after is not None
    assert entry.request_id == "req-unclaim-0001" and entry.organization_id == org.pk
    assert entry.before["server"] == str(provisioned["server"].pk) and entry.after["server"] is None
    assert entry.before["addresses"] == held and entry.after["addresses"] == {}


def test_unclaimed_box_can_be_claimed_again_and_gets_fresh_addresses(actor, org, provisioned, make_box):
    box = _claim(actor, org, make_box())
    first = _active(box)
    box_unclaim(actor=actor, box=box)
    _claim(actor, org, box)
    second = _active(box)
    assert set(first.values()).isdisjoint(second.values())
    assert Box.objects.get(pk=box.pk).tunnel_port == provisioned["server"].tunnel_port_min


def test_transfer_reprovisions_for_the_new_organization(actor, org, make_org, provisioned, make_box):
    # given a claimed box
    box = _claim(actor, org, make_box())
    before = _active(box)
    old_creds = set(TunnelCredential.objects.filter(box=box).values_list("pk", flat=True))
    other = make_org("Newco")

    # when it is transferred
    box_transfer(actor=actor, box=box, organization=other)

    # then it belongs to the new organisation with new addresses and credentials; counts stay right
    box.refresh_from_db()
    assert box.organization_id == other.pk and box.state == BoxState.CLAIMED
    after = _active(box)
    assert set(before.values()).isdisjoint(after.values())
    assert AddressAssignment.objects.filter(box=box, state=AssignmentState.QUARANTINED).count() == 3
    live = TunnelCredential.objects.filter(box=box, revoked_at__isnull=True)
    assert live.count() == 3 and not (set(live.values_list("pk", flat=True)) & old_creds)
    assert _server(provisioned["server"].pk).assigned_boxes == 1
    assert box.config_hash == box_config_document(box=box)["config_hash"]
    out = AuditLog.objects.get(action="box.transfer")
    assert out.before is not None and out.after is not None
    assert out.organization_id == org.pk
    assert out.before["organization"] == str(org.pk) and out.after["organization"] == str(other.pk)
    assert AuditLog.objects.filter(action="box.transfer_in", organization=other).exists()


def test_transfer_that_cannot_be_provisioned_changes_nothing(
    actor, org, make_org, region, make_server, make_box
):
    # given a full server (capacity 1) holding the box and pools for one box only
    server, _ = make_server(region, capacity=1)
    from tests.provisioning.conftest import AddressPool  # noqa: F401  (pools below)

    pool_create(actor=actor, name="p4", cidr="203.0.113.8/32", purpose="public_ipv4", region=region)
    pool_create(actor=actor, name="t", cidr="100.64.0.0/30", purpose="tunnel_p2p", region=region)
    pool_create(actor=actor, name="v6", cidr="2001:db8::/55", purpose="ipv6_prefix", region=region)
    box = _claim(actor, org, make_box())
    held = _active(box)

    # when a transfer needs a second public address that is not there
    with pytest.raises(Conflict) as conflict:
        box_transfer(actor=actor, box=box, organization=make_org("Newco"))

    # then the box still holds everything it had
    assert conflict.value.field == "public_ipv4"
    box.refresh_from_db()
    assert box.organization_id == org.pk and _active(box) == held and box.server_id == server.pk
    assert TunnelCredential.objects.filter(box=box, revoked_at__isnull=True).count() == 3


def test_decommission_revokes_everything_and_frees_the_slot(actor, org, provisioned, make_box):
    # given a claimed box with a live agent credential
    box = _claim(actor, org, make_box())
    AgentCredential.objects.create(box=box, token_hash=digest("otba_x"))

    # when it is decommissioned
    box_decommission(actor=actor, box=box)

    # then it is retired with nothing live
    box.refresh_from_db()
    assert box.state == BoxState.DECOMMISSIONED and box.decommissioned_at and box.organization_id is None
    assert box.server_id is None and _server(provisioned["server"].pk).assigned_boxes == 0
    assert not AddressAssignment.objects.filter(box=box, state=AssignmentState.ACTIVE).exists()
    assert not TunnelCredential.objects.filter(box=box, revoked_at__isnull=True).exists()
    assert not AgentCredential.objects.filter(box=box, revoked_at__isnull=True).exists()
    entry = AuditLog.objects.get(action="box.decommission")
    assert entry.before is not None and entry.after is not None
    assert entry.before["state"] == "claimed" and entry.after["state"] == "decommissioned"
    with pytest.raises(Conflict):
        box_decommission(actor=actor, box=box)


def test_reassign_within_a_region_keeps_the_ipv6_prefix(
    actor, org, region, make_server, make_pools, make_box
):
    # given two servers in one region, each with its own public and tunnel pools, and region IPv6
    first, _ = make_server(region, capacity=10)
    second, _ = make_server(region, capacity=5)
    pool_create(actor=actor, name="v6", cidr="2001:db8::/51", purpose="ipv6_prefix", region=region)
    for server, public, tunnel in (
        (first, "203.0.113.0/28", "100.64.0.0/28"),
        (second, "192.0.2.0/28", "100.65.0.0/28"),
    ):
        pool_create(actor=actor, name=f"{server.name}-p", cidr=public, purpose="public_ipv4", server=server)
        pool_create(actor=actor, name=f"{server.name}-t", cidr=tunnel, purpose="tunnel_p2p", server=server)
    box = _claim(actor, org, make_box())
    before = _active(box)
    assert Box.objects.get(pk=box.pk).server_id == first.pk
    old_hash = Box.objects.get(pk=box.pk).config_hash

    # when it is moved to the other server
    box_reassign_server(actor=actor, box=box, server=second)

    # then it has the second server's addresses, the same IPv6 prefix, and counters moved
    box.refresh_from_db()
    after = _active(box)
    assert box.server_id == second.pk and box.tunnel_port == second.tunnel_port_min
    assert after[PoolPurpose.PUBLIC_IPV4].startswith("192.0.2.")
    assert after[PoolPurpose.TUNNEL_P2P].startswith("100.65.")
    assert after[PoolPurpose.IPV6_PREFIX] == before[PoolPurpose.IPV6_PREFIX]
    assert _server(first.pk).assigned_boxes == 0 and _server(second.pk).assigned_boxes == 1
    assert box.config_hash != old_hash
    entry = AuditLog.objects.get(action="box.reassign_server")
    assert entry.before is not None and entry.after is not None
    assert entry.before["server"] == str(first.pk) and entry.after["server"] == str(second.pk)


def test_reassign_to_another_region_reallocates_ipv6_and_picks_the_best_server(
    actor, org, make_server, make_pools, make_box
):
    west = region_create(actor=actor, code="west", name="West")
    east = region_create(actor=actor, code="east", name="East")
    first, _ = make_server(west, capacity=20)
    other, _ = make_server(east, capacity=10)
    make_pools(region=west)
    make_pools(region=east, public="192.0.2.0/27", tunnel="100.64.1.0/26", ipv6="2001:db8:1000::/51")
    box = _claim(actor, org, make_box())
    before = _active(box)

    box_reassign_server(actor=actor, box=box)

    box.refresh_from_db()
    assert box.server_id == other.pk
    after = _active(box)
    assert after[PoolPurpose.IPV6_PREFIX].startswith("2001:db8:1")
    assert set(after.values()).isdisjoint(before.values())
    assert _server(first.pk).assigned_boxes == 0


def test_a_reassignment_puts_the_public_ip_change_on_the_timeline_and_notifies_the_customer(
    staff_actor,
    org,
    make_server,
    make_pools,
    make_box,
    queued_event_tasks,
    django_capture_on_commit_callbacks,
):
    # given a box claimed in one region, and a server in another
    west = region_create(actor=staff_actor, code="west", name="West")
    east = region_create(actor=staff_actor, code="east", name="East")
    make_server(west, capacity=20)
    other, _ = make_server(east, capacity=10, name="agg-east-1")
    make_pools(region=west, public="198.51.100.0/28")
    make_pools(region=east, public="192.0.2.0/27", tunnel="100.64.1.0/26", ipv6="2001:db8:1000::/51")
    box = _claim(staff_actor, org, make_box())

    # when staff reassign it
    with django_capture_on_commit_callbacks(execute=True):
        box_reassign_server(actor=staff_actor, box=box, server=other)

    # then its timeline says the public IP changed, from what to what and why
    event = Event.objects.get(box=box, kind=EventKind.PUBLIC_IP_CHANGED)
    assert event.organization_id == org.pk
    assert event.data == {
        "old_public_ipv4": "198.51.100.1",
        "new_public_ipv4": "192.0.2.1",
        "server": "agg-east-1",
        "region": "east",
        "ipv6_prefix_changed": True,
        "reason": "reassigned",
    }
    # and after the commit its notice is queued for the customer
    assert (EVENT_NOTICE_TASK, (str(event.pk),)) in queued_event_tasks


def test_reassign_to_a_draining_server_conflicts(actor, org, provisioned, region, make_server, make_box):
    box = _claim(actor, org, make_box())
    draining, _ = make_server(region, capacity=10, status=ServerStatus.DRAINING)
    with pytest.raises(Conflict) as conflict:
        box_reassign_server(actor=actor, box=box, server=draining)
    assert conflict.value.field == "server"
    assert Box.objects.get(pk=box.pk).server_id == provisioned["server"].pk


def test_release_addresses_and_revoke_credentials(actor, org, provisioned, make_box):
    box = _claim(actor, org, make_box())
    AgentCredential.objects.create(box=box, token_hash=digest("otba_y"))
    box_release_addresses(actor=actor, box=box)
    assert _active(box) == {}
    doc = box_config_document(box=Box.objects.get(pk=box.pk))
    assert doc["public_ipv4"] is None and doc["tunnel"] is None
    assert Box.objects.get(pk=box.pk).config_hash == doc["config_hash"]

    box_revoke_credentials(actor=actor, box=box)
    assert not TunnelCredential.objects.filter(box=box, revoked_at__isnull=True).exists()
    assert AgentCredential.objects.filter(box=box, revoked_at__isnull=True).exists()
    box_revoke_credentials(actor=actor, box=box, reissue=True)
    assert TunnelCredential.objects.filter(box=box, revoked_at__isnull=True).count() == 3
    assert (
        AuditLog.objects.filter(action__in=["box.release_addresses", "box.revoke_credentials"]).count() == 3
    )


def test_a_transfer_tells_whether_a_target_exists_only_to_the_source_owner(
    client_for: Any, people: Any, claimed_box_factory: Any
) -> None:
    # given a box of Acme and an admin of Acme (not its owner)
    box = claimed_box_factory(people.org)
    admin = client_for(people.admin)
    # when the admin transfers it to an organisation that exists and to one that does not
    existing = admin.post(
        f"/api/v1/boxes/{box.pk}/transfer", {"organization": str(people.other_org.pk)}, format="json"
    )
    unknown = admin.post(
        f"/api/v1/boxes/{box.pk}/transfer", {"organization": str(uuid.uuid4())}, format="json"
    )
    # then both are refused the same way: the source's owner role is checked first
    assert existing.status_code == unknown.status_code == 403
    # and the owner learns that an unknown target is not found
    missing = client_for(people.owner).post(
        f"/api/v1/boxes/{box.pk}/transfer", {"organization": str(uuid.uuid4())}, format="json"
    )
    assert missing.status_code == 404
