# ruff: noqa: E501  (the matrix is a table: one service per row)
"""Authorisation matrix of the services: every service that acts for a person, called directly (no
edge in front of it) by every kind of actor, must authorise on its own. A viewer, a member of another
organisation, a person whose personal API token is for another organisation and an agent are refused;
the trusted system passes; a refusal writes nothing."""

from __future__ import annotations

import base64
import datetime as dt
import inspect
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.contrib import admin
from django.core.files.base import ContentFile
from django.test import Client, RequestFactory, override_settings
from django.utils import timezone

from fleet.commands import backups, remote_access
from fleet.commands import services as commands
from fleet.commands.models import Command
from fleet.commands.services import command_cancel, command_create
from fleet.core.audit import Actor
from fleet.core.authentication import AgentPrincipal
from fleet.core.choices import Role
from fleet.core.errors import Forbidden, NotFound
from fleet.core.models import AuditLog, Box, EnrollmentToken, Membership
from fleet.core.services import (
    api_token_create,
    api_token_revoke,
    enrollment_token_create,
    enrollment_token_revoke,
    invitation_resend,
    invitation_revoke,
    member_invite,
    member_remove,
    member_set_role,
    organization_create,
    organization_update,
    organizations,
    tokens,
)
from fleet.firmware import services as firmware
from fleet.firmware.choices import UpgradeState
from fleet.firmware.models import Upgrade
from fleet.monitoring.services import (
    alert_rule_create,
    alert_rule_delete,
    alert_rule_test_notify,
    alert_rule_update,
    notification_target_create,
    notification_target_delete,
    notification_target_update,
    notifications,
    rules,
)
from frontend.views import box as box_pages
from frontend.views import console as console_pages
from otbcompat import binding
from otbcompat.services import device_subscribe
from provisioning.admin import BoxAdmin
from provisioning.apis import boxes as box_apis
from provisioning.services import configuration, infrastructure, inventory, lifecycle
from provisioning.services.configuration import box_set_port_forwards, box_set_wan_policy, box_update
from provisioning.services.inventory import boxes_import
from tests.conftest import CLAIM_CODE, FACTORY_SECRET, WG_KEY
from tests.fleet.firmware.firmware_helpers import make_release

pytestmark = pytest.mark.django_db

SYSTEM = Actor.system("test")
# "foreign_token": an owner of Acme calling with a personal API token for Globex (where they are an
# admin): without the token's narrowing they would pass everywhere in Acme.
CALLERS = ("viewer", "admin", "owner", "outsider", "foreign_token", "agent", "staff", "system")


@dataclass
class World:
    people: Any
    region: Any
    box: Any
    unclaimed: Any
    actors: dict[str, Actor]


@pytest.fixture
def world(
    people: Any, user_factory: Any, box_factory: Any, claimed_box_factory: Any, provisioned_region: Any
) -> World:
    box = claimed_box_factory(people.org)
    unclaimed = box_factory()
    dual = user_factory("dual@example.com")
    Membership.objects.create(user=dual, organization=people.org, role=Role.OWNER)
    Membership.objects.create(user=dual, organization=people.other_org, role=Role.ADMIN)
    globex_token, _ = api_token_create(actor=SYSTEM, user=dual, organization=people.other_org, name="globex")
    agent_request = RequestFactory().post("/")
    agent_request.user = AgentPrincipal(box=box, credential_id=None)  # type: ignore[assignment]
    actors = {
        role: Actor.for_user(people.by_role(role))
        for role in ("viewer", "admin", "owner", "outsider", "staff")
    }
    actors["foreign_token"] = Actor.for_user(dual, token=globex_token)
    actors["agent"] = Actor.from_request(agent_request)
    actors["system"] = SYSTEM
    return World(people=people, region=provisioned_region, box=box, unclaimed=unclaimed, actors=actors)


Setup = Callable[[World], Any] | None
Call = Callable[[World, Actor, Any], Any]

ADMIN = "F ok ok N N F ok ok"  # admin or owner of the organisation, staff, the system
OWNER = "F F ok N N F ok ok"
STAFF = "F F F F F F ok ok"


def row(name: str, setup: Setup, call: Call, outcomes: str) -> tuple[str, Setup, Call, dict[str, str]]:
    """``outcomes``: one per caller, in CALLERS order: ``ok``, ``F`` (Forbidden) or ``N`` (NotFound)."""
    return name, setup, call, dict(zip(CALLERS, outcomes.split(), strict=True))


def _otb_device(w: World) -> Any:
    """A stock OverTheBox box that subscribed (pending)."""
    return device_subscribe(
        {"macaddr": "00:0d:b9:4a:61:01", "board": "pc-engines-apu2"}, source_ip=None
    ).device


def _otb_linked(w: World) -> Any:
    """The box as a stock OverTheBox box whose subscribed device is linked to it."""
    device = _otb_device(w)
    device.box, device.linked_at = _otb_box(w), timezone.now()
    device.save(update_fields=["box", "linked_at"])
    return device


def _spare_server(w: World) -> Any:
    server, _ = infrastructure.server_create(
        actor=SYSTEM,
        name="agg-spare",
        region=w.region.region,
        hostname="agg-spare.example.net",
        public_ipv4="192.0.2.200",
        tunnel_port_min=51820,
        tunnel_port_max=52819,
        capacity=100,
        wg_public_key=WG_KEY,
    )
    return server


def _rule(w: World) -> Any:
    return alert_rule_create(actor=SYSTEM, organization=w.people.org, name="down", kind="wan_down")


def _target(w: World) -> Any:
    target, _ = notification_target_create(
        actor=SYSTEM, organization=w.people.org, name="noc", kind="email", email="noc@example.com"
    )
    return target


def _rule_with_target(w: World) -> Any:
    rule = _rule(w)
    rule.targets.set([_target(w)])
    return rule


def _invitation(w: World) -> Any:
    invitation, _token = member_invite(
        actor=SYSTEM, organization=w.people.org, email="invited@example.com", role="viewer"
    )
    return invitation


def _waiting_upgrade(w: World) -> Upgrade:
    now = timezone.now()
    return Upgrade.objects.create(
        box=w.box,
        release=make_release("2.0.0"),
        state=UpgradeState.PENDING,
        state_changed_at=now,
        pending_at=now,
    )


def _release_sign(w: World, a: Actor, release: Any) -> Any:
    """Sign with a service key of the test's own (the service refuses without one)."""
    with tempfile.TemporaryDirectory() as folder:
        key_file = Path(folder) / "service.key"
        key_file.write_bytes(base64.b64encode(b"\x05" * 32))
        with override_settings(
            OTB={
                **settings.OTB,
                "FIRMWARE_SIGNING_KEY_FILE": str(key_file),
                "FIRMWARE_SIGNING_PUBLIC_KEY": "",
            }
        ):
            return firmware.release_sign(actor=a, release=release)


def _backup(w: World) -> Any:
    command = command_create(actor=SYSTEM, box=w.box, kind="backup")
    file = {
        "filename": "/etc/config/network",
        "mode": "644",
        "uid": 0,
        "gid": 0,
        "is_symlink": False,
        "symlink": "",
        "content": "x",
    }
    return backups.backup_create_with_files(box=w.box, command_id=str(command.pk), files=[file])


def _otb_box(w: World) -> Any:
    w.box.protocol = "otb"
    w.box.save(update_fields=["protocol"])
    return w.box


REMOTE_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGq0rXbDzJbYcbkP3z1c6G1K2u7tXcWQ3yDlrRfCwB4u support"
BASTION = {"REMOTE_ACCESS_BASTION_HOST": "bastion.example.net", "REMOTE_ACCESS_BASTION_HOST_KEY": REMOTE_KEY}


def _remote_access(*, approved: bool = False) -> Callable[[World], Any]:
    def make(w: World) -> Any:
        access = remote_access.remote_access_request(
            actor=SYSTEM, box=_otb_box(w), exposed_port=22, public_key=REMOTE_KEY
        )
        if approved:
            with override_settings(OTB={**settings.OTB, **BASTION}):
                access = remote_access.remote_access_approve(actor=SYSTEM, access=access)
        return access

    return make


def _approve(w: World, a: Actor, access: Any) -> Any:
    with override_settings(OTB={**settings.OTB, **BASTION}):
        return remote_access.remote_access_approve(actor=a, access=access)


def _rollout(*, started: bool = False, paused: bool = False) -> Callable[[World], Any]:
    def make(w: World) -> Any:
        rollout = firmware.rollout_create(actor=SYSTEM, release=make_release("2.0.0"), name="r", phases=[100])
        if started or paused:
            rollout = firmware.rollout_start(actor=SYSTEM, rollout=rollout)
        if paused:
            rollout = firmware.rollout_pause(actor=SYSTEM, rollout=rollout)
        return rollout

    return make


def _membership(w: World) -> Membership:
    return Membership.objects.select_related("organization").get(
        user=w.people.viewer, organization=w.people.org
    )


# fmt: off
SERVICES = [
    # -- the box lifecycle (provisioning.services.lifecycle) -------------------------------------------- viewer admin owner outsider foreign agent staff system
    row("box_claim", None, lambda w, a, _: lifecycle.box_claim(actor=a, organization=w.people.org, serial=w.unclaimed.serial, claim_code=CLAIM_CODE), ADMIN),
    # -- binding stock OverTheBox devices (otbcompat.binding) -------------------------------------------------
    row("box_claim_with_device", None, lambda w, a, _: binding.box_claim_with_device(actor=a, organization=w.people.org, serial=w.unclaimed.serial, claim_code=CLAIM_CODE), ADMIN),
    row("device_claim", _otb_device, lambda w, a, device: binding.device_claim(actor=a, organization=w.people.org, device_id=str(device.id)), ADMIN),
    row("box_device_revoke", _otb_linked, lambda w, a, _: binding.box_device_revoke(actor=a, box=w.box), STAFF),
    row("box_unclaim", None, lambda w, a, _: lifecycle.box_unclaim(actor=a, box=w.box), ADMIN),
    # the owner of Acme is not a member of Globex: the target is invisible to them
    row("box_transfer", None, lambda w, a, _: lifecycle.box_transfer(actor=a, box=w.box, organization=w.people.other_org), "F F N N N F ok ok"),
    row("box_reassign_server", _spare_server, lambda w, a, server: lifecycle.box_reassign_server(actor=a, box=w.box, server=server), STAFF),
    row("box_release_addresses", None, lambda w, a, _: lifecycle.box_release_addresses(actor=a, box=w.box), STAFF),
    row("box_revoke_credentials", None, lambda w, a, _: lifecycle.box_revoke_credentials(actor=a, box=w.box, include_agent=True), STAFF),
    row("box_decommission", None, lambda w, a, _: lifecycle.box_decommission(actor=a, box=w.box), STAFF),
    # -- configuration and inventory ---------------------------------------------------------------------
    row("box_update", None, lambda w, a, _: box_update(actor=a, box=w.box, name="renamed"), ADMIN),
    row("box_set_port_forwards", None, lambda w, a, _: box_set_port_forwards(actor=a, box=w.box, port_forwards=[]), ADMIN),
    row("box_set_wan_policy", None, lambda w, a, _: box_set_wan_policy(actor=a, box=w.box, mode="aggregate", interfaces=[{"name": "wan1"}]), ADMIN),
    row("boxes_import", None, lambda w, a, _: boxes_import(actor=a, rows=[{"serial": "IMP-000001", "factory_secret": FACTORY_SECRET, "claim_code": CLAIM_CODE}]), STAFF),
    # -- infrastructure ----------------------------------------------------------------------------------
    row("region_create", None, lambda w, a, _: infrastructure.region_create(actor=a, code="ap-south", name="Mumbai"), STAFF),
    row("region_update", None, lambda w, a, _: infrastructure.region_update(actor=a, region=w.region.region, name="Paris"), STAFF),
    row("server_create", None, lambda w, a, _: infrastructure.server_create(
        actor=a, name="agg-new", region=w.region.region, hostname="agg-new.example.net", public_ipv4="192.0.2.99",
        tunnel_port_min=51820, tunnel_port_max=52819, capacity=10, wg_public_key=WG_KEY), STAFF),
    row("server_update", None, lambda w, a, _: infrastructure.server_update(actor=a, server=w.region.server, capacity=300), STAFF),
    row("server_set_status", None, lambda w, a, _: infrastructure.server_set_status(actor=a, server=w.region.server, status="draining"), STAFF),
    row("server_rotate_token", None, lambda w, a, _: infrastructure.server_rotate_token(actor=a, server=w.region.server), STAFF),
    row("pool_create", None, lambda w, a, _: infrastructure.pool_create(actor=a, name="pub-2", cidr="198.51.100.64/26", purpose="public_ipv4", region=w.region.region), STAFF),
    # -- organisations, people, tokens ---------------------------------------------------------------------
    row("organization_create", None, lambda w, a, _: organization_create(actor=a, name="Initech", owner_email="boss@initech.example"), STAFF),
    row("organization_update", None, lambda w, a, _: organization_update(actor=a, organization=w.people.org, timezone_name="Europe/Berlin"), ADMIN),
    row("member_invite", None, lambda w, a, _: member_invite(actor=a, organization=w.people.org, email="new@example.com", role="viewer"), OWNER),
    row("invitation_revoke", _invitation, lambda w, a, invitation: invitation_revoke(actor=a, invitation=invitation), OWNER),
    row("invitation_resend", _invitation, lambda w, a, invitation: invitation_resend(actor=a, invitation=invitation), OWNER),
    row("member_set_role", _membership, lambda w, a, membership: member_set_role(actor=a, membership=membership, role="admin"), OWNER),
    row("member_remove", _membership, lambda w, a, membership: member_remove(actor=a, membership=membership), OWNER),
    # a person issues tokens for themselves (the system for the owner here); staff and the outsider are
    # no members of Acme
    row("api_token_create", None, lambda w, a, _: api_token_create(actor=a, user=a.user or w.people.owner, organization=w.people.org, name="t"), "ok ok ok F N F F ok"),
    row("api_token_revoke", lambda w: api_token_create(actor=SYSTEM, user=w.people.owner, organization=w.people.org, name="o")[0],
        lambda w, a, token: api_token_revoke(actor=a, token=token), "N N ok N N F ok ok"),
    row("enrollment_token_create", None, lambda w, a, _: enrollment_token_create(actor=a, organization=w.people.org, name="t", expires_in_hours=1, single_use=False), ADMIN),
    row("enrollment_token_revoke", lambda w: enrollment_token_create(actor=SYSTEM, organization=w.people.org, name="t", expires_in_hours=1, single_use=False)[0],
        lambda w, a, token: enrollment_token_revoke(actor=a, token=EnrollmentToken.objects.select_related("organization").get(pk=token.pk)), ADMIN),
    # -- monitoring rules and targets ------------------------------------------------------------------------
    row("alert_rule_create", None, lambda w, a, _: alert_rule_create(actor=a, organization=w.people.org, name="down", kind="wan_down"), ADMIN),
    row("alert_rule_update", _rule, lambda w, a, rule: alert_rule_update(actor=a, rule=rule, enabled=False), ADMIN),
    row("alert_rule_test_notify", _rule_with_target, lambda w, a, rule: alert_rule_test_notify(actor=a, rule=rule), ADMIN),
    row("alert_rule_delete", _rule, lambda w, a, rule: alert_rule_delete(actor=a, rule=rule), ADMIN),
    row("notification_target_create", None, lambda w, a, _: notification_target_create(actor=a, organization=w.people.org, name="noc", kind="email", email="noc@example.com"), ADMIN),
    row("notification_target_update", _target, lambda w, a, target: notification_target_update(actor=a, target=target, name="ops"), ADMIN),
    row("notification_target_delete", _target, lambda w, a, target: notification_target_delete(actor=a, target=target), ADMIN),
    # -- commands ----------------------------------------------------------------------------------------------
    row("command_create", None, lambda w, a, _: command_create(actor=a, box=w.box, kind="reboot"), ADMIN),
    row("command_cancel", lambda w: command_create(actor=SYSTEM, box=w.box, kind="reboot"), lambda w, a, command: command_cancel(actor=a, command=command), ADMIN),
    # -- configuration backups and remote access (fleet.commands.backups, fleet.commands.remote_access) -------
    row("backup_restore", _backup, lambda w, a, backup: backups.backup_restore(actor=a, backup=backup), ADMIN),
    row("backup_delete", _backup, lambda w, a, backup: backups.backup_delete(actor=a, backup=backup), ADMIN),
    row("remote_access_request", _otb_box, lambda w, a, box: remote_access.remote_access_request(actor=a, box=box, exposed_port=22, public_key=REMOTE_KEY), ADMIN),
    # the customer's consent: an owner (never staff on their behalf), or the trusted system
    row("remote_access_approve", _remote_access(), _approve, "F F ok N N F F ok"),
    row("remote_access_reject", _remote_access(), lambda w, a, access: remote_access.remote_access_reject(actor=a, access=access), ADMIN),
    row("remote_accesses_open", None, lambda w, a, _: remote_access.remote_accesses_open(actor=a), STAFF),
    row("remote_access_close", _remote_access(approved=True), lambda w, a, access: remote_access.remote_access_close(actor=a, access=access), ADMIN),
    # -- firmware: a box's upgrades --------------------------------------------------------------------------
    row("box_upgrade_policy_update", None, lambda w, a, _: firmware.box_upgrade_policy_update(actor=a, box=w.box, auto_upgrade=False), ADMIN),
    row("box_upgrade_now", lambda w: make_release("2.0.0"), lambda w, a, release: firmware.box_upgrade_now(actor=a, box=w.box, release=release), ADMIN),
    row("upgrade_postpone", _waiting_upgrade, lambda w, a, upgrade: firmware.upgrade_postpone(actor=a, upgrade=upgrade, until=timezone.now() + dt.timedelta(days=1)), ADMIN),
    # -- firmware: releases and rollouts -------------------------------------------------------------------------
    row("release_create", None, lambda w, a, _: firmware.release_create(actor=a, version="3.0.0", hardware_models=["OTB-v2c"]), STAFF),
    row("release_update", lambda w: make_release("2.0.0", publish=False), lambda w, a, release: firmware.release_update(actor=a, release=release, notes="notes"), STAFF),
    row("release_image_upload", lambda w: firmware.release_create(actor=SYSTEM, version="3.0.0", hardware_models=["OTB-v2c"]),
        lambda w, a, release: firmware.release_image_upload(actor=a, release=release, upload=ContentFile(b"image", name="fw.img")), STAFF),
    row("release_add", None, lambda w, a, _: firmware.release_add(actor=a, version="3.0.0", hardware_models=["OTB-v2c"], upload=ContentFile(b"image", name="fw.img")), STAFF),
    row("release_sign", lambda w: firmware.release_add(actor=SYSTEM, version="3.0.0", hardware_models=["OTB-v2c"], upload=ContentFile(b"image", name="fw.img")), _release_sign, STAFF),
    row("release_publish", lambda w: make_release("2.0.0", publish=False), lambda w, a, release: firmware.release_publish(actor=a, release=release), STAFF),
    row("release_withdraw", lambda w: make_release("2.0.0"), lambda w, a, release: firmware.release_withdraw(actor=a, release=release), STAFF),
    row("rollout_create", lambda w: make_release("2.0.0"), lambda w, a, release: firmware.rollout_create(actor=a, release=release, name="r"), STAFF),
    row("rollout_start", _rollout(), lambda w, a, rollout: firmware.rollout_start(actor=a, rollout=rollout), STAFF),
    row("rollout_pause", _rollout(started=True), lambda w, a, rollout: firmware.rollout_pause(actor=a, rollout=rollout), STAFF),
    row("rollout_resume", _rollout(paused=True), lambda w, a, rollout: firmware.rollout_resume(actor=a, rollout=rollout), STAFF),
    row("rollout_abort", _rollout(started=True), lambda w, a, rollout: firmware.rollout_abort(actor=a, rollout=rollout), STAFF),
    row("upgrades_retry_failed", _rollout(started=True), lambda w, a, rollout: firmware.upgrades_retry_failed(actor=a, rollout=rollout), STAFF),
]
# fmt: on

CASES = [
    pytest.param(setup, call, caller, outcomes[caller], id=f"{name} by {caller}")
    for name, setup, call, outcomes in SERVICES
    for caller in CALLERS
]
ERRORS = {"F": Forbidden, "N": NotFound}


@pytest.mark.parametrize(("setup", "call", "caller", "expected"), CASES)
def test_service_authorises_each_actor_as_expected(
    world: World, setup: Setup, call: Call, caller: str, expected: str
) -> None:
    # given the world, what the service acts on, and one actor
    target = setup(world) if setup is not None else None
    actor = world.actors[caller]
    audit_before = AuditLog.objects.count()
    # when the service is called directly
    if expected == "ok":
        call(world, actor, target)
        return
    # then a refused actor gets the expected error, and nothing was written
    with pytest.raises(ERRORS[expected]):
        call(world, actor, target)
    assert AuditLog.objects.count() == audit_before


def test_every_service_taking_an_actor_is_in_the_matrix() -> None:
    # given the public functions of the service modules that take an actor
    modules = (
        lifecycle,
        configuration,
        inventory,
        infrastructure,
        organizations,
        tokens,
        rules,
        notifications,
        commands,
        backups,
        remote_access,
        firmware,
        binding,
    )
    taking_an_actor = {
        name
        for module in modules
        for name, function in vars(module).items()
        if inspect.isfunction(function)
        and function.__module__ == module.__name__
        and not name.startswith("_")
        and "actor" in inspect.signature(function).parameters
    }
    # then each is in the matrix, but for a dispatch to those that are and the box settings rule itself
    covered = {name for name, *_ in SERVICES}
    assert taking_an_actor - covered == {"rollout_act", "box_settings_authorize"}


def test_a_person_cannot_issue_an_api_token_for_someone_else(world: World) -> None:
    with pytest.raises(NotFound):
        api_token_create(
            actor=world.actors["owner"], user=world.people.viewer, organization=world.people.org, name="x"
        )


# --- an edge that forgets ------------------------------------------------------------------------------
# Each edge kind with its own check taken away (the caller's object resolved whatever they may see, the
# staff gate opened): the service still refuses, with the status the edge always gave, and writes nothing.


def _anybody_sees(actor: Actor, box_id: Any) -> Box:
    return Box.objects.get(pk=box_id)


def test_an_api_view_cannot_bypass_the_service(world: World, client_for: Any, monkeypatch: Any) -> None:
    # given the box endpoint resolving any box for anyone
    monkeypatch.setattr(box_apis, "box_visible", _anybody_sees)
    audit_before = AuditLog.objects.count()
    # when a viewer and a member of another organisation rename the box
    url = f"/api/v1/boxes/{world.box.pk}/"
    viewer = client_for(world.people.viewer).patch(url, {"name": "x"}, format="json")
    outsider = client_for(world.people.outsider).patch(url, {"name": "x"}, format="json")
    # then the service refuses them as the edge did: 403 and 404, and nothing changed
    assert (viewer.status_code, outsider.status_code) == (403, 404)
    assert outsider.json()["error"]["message"] == "organization not found"
    world.box.refresh_from_db()
    assert world.box.name == "" and AuditLog.objects.count() == audit_before


def test_a_portal_page_cannot_bypass_the_service(world: World, monkeypatch: Any) -> None:
    # given the box page resolving any box for anyone
    monkeypatch.setattr(box_pages, "box_visible", _anybody_sees)
    url = f"/boxes/{world.box.pk}/commands/new/"
    # when a viewer and a member of another organisation send a reboot
    responses = []
    for user in (world.people.viewer, world.people.outsider):
        client = Client()
        client.force_login(user)
        responses.append(client.post(url, {"kind": "reboot", "confirm": "on"}).status_code)
    # then the command service refuses them with a 403 and a 404 page, and no command exists
    assert responses == [403, 404]
    assert not Command.objects.filter(box=world.box).exists()


def test_a_console_page_cannot_bypass_the_service(world: World, monkeypatch: Any) -> None:
    # given the console letting a customer in (its staff gate opened)
    monkeypatch.setattr(console_pages, "is_staff", lambda user: True)
    client = Client()
    client.force_login(world.people.owner)
    # when the box's owner decommissions it
    response = client.post(
        f"/console/boxes/{world.box.pk}/decommission/", {"confirm_serial": world.box.serial}
    )
    # then the service refuses: staff only, and the box is untouched
    assert response.status_code == 403
    world.box.refresh_from_db()
    assert world.box.state == "claimed"


def test_an_admin_action_cannot_bypass_the_service(world: World) -> None:
    # given the box admin's decommission action run for a customer (the admin site's staff gate skipped)
    request = RequestFactory().post("/admin/fleet/box/")
    request.user = world.people.owner
    reported: list[str] = []

    class RecordingBoxAdmin(BoxAdmin):
        def message_user(self, request: Any, message: Any, *args: Any, **kwargs: Any) -> None:
            reported.append(str(message))

    model_admin = RecordingBoxAdmin(Box, admin.site)
    # when the action runs on the owner's own box
    model_admin.decommission(request, Box.objects.filter(pk=world.box.pk))
    # then the service refused it, and the admin reported that
    assert reported == [f"decommission refused for {world.box}: support staff only"]
    world.box.refresh_from_db()
    assert world.box.state == "claimed"
