# ruff: noqa: E501  (the matrix is a table: one endpoint per row)
"""Authorization matrix: every REST endpoint of the fleet and provisioning apps, called by every kind
of caller, must answer the expected status. No cross-organisation read or write, no write by a
viewer, no person endpoint for a box or a server token, and a refused call writes nothing."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from rest_framework.test import APIClient

from fleet.commands.backups import backup_create_with_files
from fleet.commands.services import command_create
from fleet.core.audit import Actor
from fleet.core.models import AuditLog, Invitation, Membership
from fleet.core.services import api_token_create, enrollment_token_create, member_invite
from tests.conftest import FACTORY_SECRET, WG_KEY

pytestmark = pytest.mark.django_db

CALLERS = ("anonymous", "outsider", "viewer", "admin", "owner", "staff", "agent", "server")


@dataclass
class World:
    ids: dict[str, str]
    clients: dict[str, APIClient]


@pytest.fixture
def world(
    people: Any,
    box_factory: Any,
    claimed_box_factory: Any,
    provisioned_region: Any,
    agent_token_factory: Any,
) -> World:
    from provisioning.services.infrastructure import server_create

    box = claimed_box_factory(people.org)
    their_box = claimed_box_factory(people.other_org)
    unclaimed = box_factory()
    spare_server, _ = server_create(
        actor=Actor.system("test"),
        name="agg-spare",
        region=provisioned_region.region,
        hostname="agg-spare.example.net",
        public_ipv4="192.0.2.200",
        tunnel_port_min=51820,
        tunnel_port_max=52819,
        capacity=100,
        wg_public_key=WG_KEY,
    )
    owner_actor = Actor.for_user(people.owner)
    owner_token, _ = api_token_create(
        actor=owner_actor, user=people.owner, organization=people.org, name="mine"
    )
    enrollment_token, _ = enrollment_token_create(
        actor=owner_actor, organization=people.org, name="batch", expires_in_hours=1, single_use=False
    )
    _, invitation_token = member_invite(
        actor=owner_actor, organization=people.org, email="outsider@example.com", role="viewer"
    )
    backup_command = command_create(actor=Actor.system("test"), box=box, kind="backup")
    backup = backup_create_with_files(
        box=box,
        command_id=str(backup_command.pk),
        files=[{"filename": "/etc/config/network", "mode": "644", "uid": 0, "gid": 0, "is_symlink": False,
                "symlink": "", "content": "config interface 'lan'\n"}],
    )  # fmt: skip
    their_backup_command = command_create(actor=Actor.system("test"), box=their_box, kind="backup")
    ids = {
        "org": str(people.org.pk),
        "other_org": str(people.other_org.pk),
        "box": str(box.pk),
        "box_serial": box.serial,
        "box_config_hash": box.config_hash,
        "unclaimed_serial": unclaimed.serial,
        "viewer_membership": str(Membership.objects.get(user=people.viewer, organization=people.org).pk),
        "owner_token": str(owner_token.pk),
        "enrollment_token": str(enrollment_token.pk),
        "invitation_token": invitation_token,
        "region": str(provisioned_region.region.pk),
        "server": str(provisioned_region.server.pk),
        "spare_server": str(spare_server.pk),
        "pool": str(next(iter(provisioned_region.pools.values())).pk),
        "backup": str(backup.pk),
        "their_backup_command": str(their_backup_command.pk),
    }
    clients: dict[str, APIClient] = {"anonymous": APIClient()}
    for role in ("outsider", "viewer", "admin", "owner", "staff"):
        client = APIClient()
        client.force_login(people.by_role(role))
        clients[role] = client
    # "agent": the agent of another organisation's box; "server": an aggregation server.
    clients["agent"] = APIClient(HTTP_AUTHORIZATION=f"Bearer {agent_token_factory(their_box)}")
    clients["server"] = APIClient(HTTP_AUTHORIZATION=f"Bearer {provisioned_region.server_token}")
    return World(ids=ids, clients=clients)


Body = Callable[[dict[str, str]], Any] | None


def row(method: str, url: str, body: Body, statuses: str) -> tuple[str, str, Body, dict[str, int]]:
    """``statuses``: one code per caller, in CALLERS order; ``P`` (403) is a person endpoint called
    with a box or server token."""
    codes = [403 if code == "P" else int(code) for code in statuses.split()]
    return method, url, body, dict(zip(CALLERS, codes, strict=True))


# fmt: off
ENDPOINTS = [
    #                                                                 anon out view adm own staff agent server
    # -- agent: bearer tokens only, so a browser session is not an agent (401) -----------------------------
    row("post", "/api/v1/agent/enroll", lambda i: {"serial": i["box_serial"], "factory_secret": FACTORY_SECRET},
                                                                      "201 201 201 201 201 201 201 201"),
    row("get", "/api/v1/agent/config", None,                          "401 401 401 401 401 401 200 403"),
    row("post", "/api/v1/agent/config/applied", lambda i: {"config_hash": "ab" * 32},
                                                                      "401 401 401 401 401 401 200 403"),
    row("get", "/api/v1/agent/speedtest?bytes=10", None,              "401 401 401 401 401 401 200 403"),
    # the upload counts any body (here a small JSON one) and answers {"bytes", "duration_s"}
    row("post", "/api/v1/agent/speedtest", lambda i: {"padding": "x" * 100},
                                                                      "401 401 401 401 401 401 200 403"),
    # -- people --------------------------------------------------------------------------------------------
    row("get", "/api/v1/me", None,                                    "401 200 200 200 200 200 P P"),
    row("get", "/api/v1/organizations/", None,                        "401 200 200 200 200 200 P P"),
    row("get", "/api/v1/organizations/{org}/", None,                  "401 404 200 200 200 200 P P"),
    row("patch", "/api/v1/organizations/{org}/", lambda i: {"timezone": "Europe/Berlin"},
                                                                      "401 404 403 200 200 200 P P"),
    row("get", "/api/v1/organizations/{org}/members/", None,          "401 404 200 200 200 200 P P"),
    row("patch", "/api/v1/organizations/{org}/members/{viewer_membership}/", lambda i: {"role": "admin"},
                                                                      "401 404 403 403 200 200 P P"),
    row("delete", "/api/v1/organizations/{org}/members/{viewer_membership}/", None,
                                                                      "401 404 403 403 204 204 P P"),
    row("post", "/api/v1/organizations/{org}/invitations/", lambda i: {"email": "x@example.com", "role": "viewer"},
                                                                      "401 404 403 403 201 201 P P"),
    # the invitation is addressed to the outsider: nobody else may accept it
    row("post", "/api/v1/invitations/accept", lambda i: {"token": i["invitation_token"]},
                                                                      "401 201 403 403 403 403 P P"),
    row("get", "/api/v1/tokens/", None,                               "401 200 200 200 200 200 P P"),
    # staff may see every organisation but a token needs a membership
    row("post", "/api/v1/tokens/", lambda i: {"name": "t", "organization": i["org"]},
                                                                      "401 404 201 201 201 403 P P"),
    row("delete", "/api/v1/tokens/{owner_token}/", None,              "401 404 404 404 204 404 P P"),
    row("get", "/api/v1/organizations/{org}/enrollment-tokens/", None, "401 404 403 200 200 200 P P"),
    row("post", "/api/v1/organizations/{org}/enrollment-tokens/", lambda i: {"name": "t", "expires_in_hours": 1},
                                                                      "401 404 403 201 201 201 P P"),
    row("delete", "/api/v1/organizations/{org}/enrollment-tokens/{enrollment_token}/", None,
                                                                      "401 404 403 204 204 204 P P"),
    # -- boxes ---------------------------------------------------------------------------------------------
    row("get", "/api/v1/boxes/", None,                                "401 200 200 200 200 200 P P"),
    row("get", "/api/v1/boxes/{box}/", None,                          "401 404 200 200 200 200 P P"),
    row("patch", "/api/v1/boxes/{box}/", lambda i: {"name": "renamed"}, "401 404 403 200 200 200 P P"),
    row("post", "/api/v1/boxes/claim",
        lambda i: {"serial": i["unclaimed_serial"], "claim_code": "claim-code-0001", "organization": i["org"]},
                                                                      "401 404 403 201 201 201 P P"),
    row("get", "/api/v1/boxes/{box}/wan-policy", None,                "401 404 200 200 200 200 P P"),
    row("put", "/api/v1/boxes/{box}/wan-policy", lambda i: {"mode": "aggregate", "interfaces": [{"name": "wan1"}]},
                                                                      "401 404 403 200 200 200 P P"),
    row("post", "/api/v1/boxes/{box}/unclaim", None,                  "401 404 403 200 200 200 P P"),
    # the owner of the source is not a member of the target: the target is invisible to them
    row("post", "/api/v1/boxes/{box}/transfer", lambda i: {"organization": i["other_org"]},
                                                                      "401 404 403 403 404 200 P P"),
    row("get", "/api/v1/boxes/{box}/audit", None,                     "401 404 200 200 200 200 P P"),
    # -- configuration backups and remote access (the agent of their box uploads for its own command) ------
    row("get", "/api/v1/boxes/{box}/backups/", None,                  "401 404 200 200 200 200 P P"),
    row("get", "/api/v1/boxes/{box}/backups/{backup}/", None,         "401 404 200 200 200 200 P P"),
    row("get", "/api/v1/boxes/{box}/backups/{backup}/file?path=/etc/config/network", None,
                                                                      "401 404 200 200 200 200 P P"),
    row("get", "/api/v1/boxes/{box}/backups/diff?old={backup}&new={backup}", None,
                                                                      "401 404 200 200 200 200 P P"),
    row("get", "/api/v1/boxes/{box}/backups/{backup}/archive", None,  "401 404 200 200 200 200 P P"),
    row("post", "/api/v1/boxes/{box}/backups/{backup}/restore", None, "401 404 403 201 201 201 P P"),
    row("delete", "/api/v1/boxes/{box}/backups/{backup}/", None,      "401 404 403 204 204 204 P P"),
    row("post", "/api/v1/agent/backups", lambda i: {"command_id": i["their_backup_command"], "files": []},
                                                                      "401 401 401 401 401 401 201 403"),
    # a backup of our box is not found by the agent of theirs
    row("get", "/api/v1/agent/backups/{backup}", None,                "401 401 401 401 401 401 404 403"),
    row("get", "/api/v1/boxes/{box}/remote-accesses/", None,          "401 404 200 200 200 200 P P"),
    row("get", "/api/v1/audit/", None,                                "401 200 200 200 200 200 P P"),
    # -- provisioning: staff, and aggregation servers for their peers ---------------------------------------
    row("get", "/api/v1/servers/self/peers", None,                    "401 403 403 403 403 403 403 200"),
    row("post", "/api/v1/servers/self/report",
        lambda i: {"gateway_version": "0.1.0", "uptime_s": 5, "load1": 0.1, "cpu_pct": 1.0, "mem_pct": 2.0,
                   "wg_public_key": "", "peers": 0, "converge_errors": 0, "boxes": []},
                                                                      "401 403 403 403 403 403 403 200"),
    row("get", "/api/v1/regions/", None,                              "401 403 403 403 403 200 403 403"),
    row("post", "/api/v1/regions/", lambda i: {"code": "ap-south", "name": "Mumbai"},
                                                                      "401 403 403 403 403 201 403 403"),
    row("get", "/api/v1/servers/", None,                              "401 403 403 403 403 200 403 403"),
    row("post", "/api/v1/servers/",
        lambda i: {"name": "agg-new", "region": i["region"], "hostname": "agg-new.example.net",
                   "public_ipv4": "192.0.2.99", "capacity": 10, "wg_public_key": WG_KEY},
                                                                      "401 403 403 403 403 201 403 403"),
    row("get", "/api/v1/servers/{server}/", None,                     "401 403 403 403 403 200 403 403"),
    row("patch", "/api/v1/servers/{server}/", lambda i: {"capacity": 300},
                                                                      "401 403 403 403 403 200 403 403"),
    row("post", "/api/v1/servers/{server}/rotate-token", None,        "401 403 403 403 403 200 403 403"),
    row("get", "/api/v1/pools/", None,                                "401 403 403 403 403 200 403 403"),
    row("post", "/api/v1/pools/",
        lambda i: {"name": "pub-2", "cidr": "198.51.100.64/26", "purpose": "public_ipv4", "region": i["region"]},
                                                                      "401 403 403 403 403 201 403 403"),
    row("get", "/api/v1/pools/{pool}/", None,                         "401 403 403 403 403 200 403 403"),
    row("post", "/api/v1/boxes/{box}/reassign-server", lambda i: {"server": i["spare_server"]},
                                                                      "401 403 403 403 403 200 403 403"),
    row("post", "/api/v1/boxes/{box}/release-addresses", None,        "401 403 403 403 403 200 403 403"),
    row("post", "/api/v1/boxes/{box}/revoke-credentials", lambda i: {},
                                                                      "401 403 403 403 403 200 403 403"),
    row("post", "/api/v1/boxes/{box}/decommission", None,             "401 403 403 403 403 200 403 403"),
]
# fmt: on

CASES = [
    pytest.param(method, url, body, caller, statuses[caller], id=f"{method.upper()} {url} as {caller}")
    for method, url, body, statuses in ENDPOINTS
    for caller in CALLERS
]


@pytest.mark.parametrize(("method", "url", "body", "caller", "expected"), CASES)
def test_endpoint_answers_each_caller_as_expected(
    world: World, method: str, url: str, body: Body, caller: str, expected: int
) -> None:
    # given the world and one caller
    client = world.clients[caller]
    audit_before = AuditLog.objects.count()
    invitations_before = Invitation.objects.count()
    # when the endpoint is called
    kwargs: dict[str, Any] = {"format": "json"}
    if body is not None:
        kwargs["data"] = body(world.ids)
    response = getattr(client, method)(url.format(**world.ids), **kwargs)
    # then the status is the expected one, and a refusal wrote nothing
    assert response.status_code == expected, (response.status_code, getattr(response, "content", b"")[:300])
    if response.status_code >= 400:
        assert AuditLog.objects.count() == audit_before
        assert Invitation.objects.count() == invitations_before
        assert "error" in response.json()


def test_no_box_of_another_organisation_is_listed(world: World, people: Any) -> None:
    for caller in ("outsider", "viewer", "admin", "owner"):
        boxes = world.clients[caller].get("/api/v1/boxes/").json()["results"]
        expected = people.other_org.pk if caller == "outsider" else people.org.pk
        assert boxes and {box["organization"]["id"] for box in boxes} == {str(expected)}
    assert (
        world.clients["outsider"].get(f"/api/v1/boxes/?organization={world.ids['org']}").json()["count"] == 0
    )
    staff = world.clients["staff"].get("/api/v1/boxes/").json()
    assert staff["count"] == 3


def test_an_api_token_is_narrowed_to_its_organisation(
    world: World, people: Any, api_token_factory: Any
) -> None:
    # given the outsider is also an owner of Acme, but their token is for Globex
    Membership.objects.create(user=people.outsider, organization=people.org, role="owner")
    client = APIClient(HTTP_AUTHORIZATION=f"Bearer {api_token_factory(people.outsider, people.other_org)}")
    # then Acme's objects are invisible through that token
    assert client.get(f"/api/v1/boxes/{world.ids['box']}/").status_code == 404
    assert client.get(f"/api/v1/organizations/{world.ids['org']}/").status_code == 404
    assert {box["organization"]["id"] for box in client.get("/api/v1/boxes/").json()["results"]} == {
        world.ids["other_org"]
    }
