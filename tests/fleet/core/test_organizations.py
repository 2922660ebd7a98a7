"""fleet.core.services: given / when / then, against the real database and Redis."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.core import mail
from django.db import connection
from django.utils import timezone

from fleet.core.audit import Actor
from fleet.core.choices import BoxState, Role
from fleet.core.errors import Conflict, Forbidden, InvalidInput, NotAuthenticated, RateLimited
from fleet.core.models import (
    AgentCredential,
    ApiToken,
    AuditLog,
    Box,
    EnrollmentToken,
    Invitation,
    Membership,
)
from fleet.core.services import (
    api_token_create,
    api_token_revoke,
    enrollment_token_create,
    enrollment_token_revoke,
    invitation_accept,
    member_invite,
    member_remove,
    member_set_role,
    organization_create,
)
from fleet.core.tokens import digest
from provisioning.choices import TunnelKind
from provisioning.models import TunnelCredential
from provisioning.services.configuration import box_config_applied, box_set_wan_policy, box_update
from provisioning.services.enrollment import box_enroll
from provisioning.services.inventory import boxes_import
from tests.conftest import CLAIM_CODE, FACTORY_SECRET, WG_KEY

OTHER_WG_KEY = "b3RoZXIta2V5LXRoYXQtaXMtMzItYnl0ZXMtbG9uZyE="

pytestmark = pytest.mark.django_db


def import_row(serial: str, **overrides: str) -> dict[str, str]:
    row = {
        "serial": serial,
        "model": "OTB-v2c",
        "mac": "AA-BB-CC-00-11-22",
        "factory_secret": "secret-" + serial,
        "claim_code": "claim-" + serial,
    }
    row.update(overrides)
    return row


# -- organisations and members ----------------------------------------------------------------------


def test_organization_create_makes_the_owner_user_when_missing(system_actor: Actor) -> None:
    # given no user with that email
    # when
    organization = organization_create(
        actor=system_actor, name="Initech", owner_email="Boss@Initech.COM", owner_password="pw-12345678"
    )
    # then
    owner = get_user_model().objects.get(email="Boss@initech.com")
    assert owner.check_password("pw-12345678")
    assert Membership.objects.get(organization=organization).role == Role.OWNER
    assert AuditLog.objects.filter(action="organization.create", organization=organization).count() == 1


def test_organization_create_refuses_a_duplicate_name(system_actor: Actor, people: Any) -> None:
    with pytest.raises(Conflict) as exc:
        organization_create(actor=system_actor, name="acme", owner_email="x@example.com")
    assert exc.value.field == "name"


def test_member_invite_mails_a_token_that_is_stored_hashed(
    people: Any, user_factory: Any, django_capture_on_commit_callbacks: Any
) -> None:
    # given an owner
    actor = Actor.for_user(people.owner)
    # when they invite someone, committing the transaction so the mail is sent
    with django_capture_on_commit_callbacks(execute=True):
        invitation, token = member_invite(
            actor=actor, organization=people.org, email="new@example.com", role="admin"
        )
    # then the mail carries the token and only its digest is stored
    assert len(mail.outbox) == 1 and token in mail.outbox[0].body
    assert invitation.token_hash == digest(token)
    # and the invited user can accept it once
    newcomer = user_factory("new@example.com")
    membership = invitation_accept(user=newcomer, token=token)
    assert membership.role == Role.ADMIN
    with pytest.raises(Conflict):
        invitation_accept(user=newcomer, token=token)


def test_member_invite_is_owner_only(people: Any) -> None:
    with pytest.raises(Forbidden):
        member_invite(
            actor=Actor.for_user(people.admin), organization=people.org, email="a@b.example", role="viewer"
        )
    assert Invitation.objects.count() == 0


def test_invitation_for_another_email_is_refused(people: Any, user_factory: Any) -> None:
    _, token = member_invite(
        actor=Actor.for_user(people.owner), organization=people.org, email="a@example.com", role="viewer"
    )
    with pytest.raises(Forbidden):
        invitation_accept(user=user_factory("b@example.com"), token=token)


def test_last_owner_can_be_neither_demoted_nor_removed(people: Any) -> None:
    # given the only owner of the organisation
    owner_membership = Membership.objects.get(user=people.owner, organization=people.org)
    actor = Actor.for_user(people.owner)
    # when / then
    with pytest.raises(Conflict):
        member_set_role(actor=actor, membership=owner_membership, role="admin")
    with pytest.raises(Conflict):
        member_remove(actor=actor, membership=owner_membership)
    # but with a second owner, demotion works
    admin_membership = Membership.objects.get(user=people.admin, organization=people.org)
    member_set_role(actor=actor, membership=admin_membership, role="owner")
    member_set_role(actor=actor, membership=owner_membership, role="viewer")
    assert Membership.objects.get(pk=owner_membership.pk).role == Role.VIEWER


def test_member_remove_revokes_their_tokens(people: Any, api_token_factory: Any) -> None:
    api_token_factory(people.viewer, people.org)
    membership = Membership.objects.get(user=people.viewer, organization=people.org)
    member_remove(actor=Actor.for_user(people.owner), membership=membership)
    assert not ApiToken.objects.filter(user=people.viewer, revoked_at__isnull=True).exists()


# -- tokens ----------------------------------------------------------------------------------------


def test_api_token_needs_membership_and_a_bounded_lifetime(people: Any) -> None:
    actor = Actor.for_user(people.owner)
    with pytest.raises(Forbidden):
        api_token_create(actor=actor, user=people.owner, organization=people.other_org, name="x")
    with pytest.raises(InvalidInput) as exc:
        api_token_create(
            actor=actor, user=people.owner, organization=people.org, name="x", expires_in_days=366
        )
    assert exc.value.field == "expires_in_days"
    token, value = api_token_create(actor=actor, user=people.owner, organization=people.org, name="ci")
    assert value.startswith("otbu_")
    assert timedelta(days=89) < token.expires_at - timezone.now() <= timedelta(days=90)
    api_token_revoke(actor=actor, token=token)
    assert ApiToken.objects.get(pk=token.pk).revoked_at is not None


def test_enrollment_token_is_admin_or_owner_only(people: Any) -> None:
    with pytest.raises(Forbidden):
        enrollment_token_create(
            actor=Actor.for_user(people.viewer),
            organization=people.org,
            name="x",
            expires_in_hours=1,
            single_use=True,
        )
    token, _ = enrollment_token_create(
        actor=Actor.for_user(people.admin),
        organization=people.org,
        name="x",
        expires_in_hours=1,
        single_use=True,
    )
    enrollment_token_revoke(actor=Actor.for_user(people.admin), token=token)
    assert EnrollmentToken.objects.get(pk=token.pk).revoked_at is not None


def _all_column_values(table: str) -> list[str]:
    with connection.cursor() as cursor:
        cursor.execute(f'SELECT * FROM "{table}"')
        return [str(value) for row in cursor.fetchall() for value in row if value is not None]


def test_no_token_value_is_stored_in_any_column(
    people: Any, box_factory: Any, provisioned_region: Any, mailoutbox: Any
) -> None:
    # given every kind of token issued by the fleet services
    owner = Actor.for_user(people.owner)
    _, api_value = api_token_create(actor=owner, user=people.owner, organization=people.org, name="t")
    _, enroll_value = enrollment_token_create(
        actor=owner, organization=people.org, name="t", expires_in_hours=2, single_use=False
    )
    _, invite_value = member_invite(
        actor=owner, organization=people.org, email="z@example.com", role="viewer"
    )
    box = box_factory()
    _, agent_value = box_enroll(serial=box.serial, factory_secret=FACTORY_SECRET, source_ip="10.0.0.1")
    # when every row of the token tables (and the audit log) is scanned
    tables = [
        ApiToken._meta.db_table,
        EnrollmentToken._meta.db_table,
        Invitation._meta.db_table,
        AgentCredential._meta.db_table,
        Box._meta.db_table,
        AuditLog._meta.db_table,
    ]
    stored = [value for table in tables for value in _all_column_values(table)]
    # then no column holds a token value, and the digests are there
    for value in (api_value, enroll_value, invite_value, agent_value, FACTORY_SECRET, CLAIM_CODE):
        assert not any(value in cell for cell in stored), value
    assert digest(agent_value) in stored


# -- import ----------------------------------------------------------------------------------------


def test_import_creates_normalises_and_is_idempotent(system_actor: Actor) -> None:
    # given two good rows
    rows = [import_row("IMP-1"), import_row("IMP-2", mac="aabb.cc00.1133")]
    # when imported twice
    first = boxes_import(actor=system_actor, rows=rows)
    second = boxes_import(actor=system_actor, rows=rows)
    # then the first creates, the second changes nothing
    assert (first.created, first.unchanged, first.rejected) == (2, 0, 0)
    assert (second.created, second.unchanged, second.rejected) == (0, 2, 0)
    assert Box.objects.get(serial="IMP-1").mac == "aa:bb:cc:00:11:22"
    assert Box.objects.get(serial="IMP-2").mac == "aa:bb:cc:00:11:33"
    assert Box.objects.get(serial="IMP-1").state == BoxState.UNCLAIMED


def test_import_never_overwrites_a_factory_secret(system_actor: Actor) -> None:
    boxes_import(actor=system_actor, rows=[import_row("IMP-1")])
    stored = Box.objects.get(serial="IMP-1").factory_secret_hash
    report = boxes_import(actor=system_actor, rows=[import_row("IMP-1", factory_secret="another-secret")])
    assert report.rejected == 1
    error = report.errors[0]
    assert (error.line, error.field, error.kind) == (2, "factory_secret", "conflict")
    assert Box.objects.get(serial="IMP-1").factory_secret_hash == stored


def test_import_reports_every_bad_row_with_its_line_and_field(system_actor: Actor, box_factory: Any) -> None:
    box_factory("GONE-1", state=BoxState.DECOMMISSIONED)
    rows = [
        import_row("OK-1"),
        import_row("bad serial!"),
        import_row("OK-2", mac="zz:zz"),
        import_row("OK-3", factory_secret="short"),
        import_row("OK-1", claim_code="different-claim"),
        import_row("GONE-1"),
        import_row("É" * 3),
        import_row("X" * 65),
    ]
    report = boxes_import(actor=system_actor, rows=rows)
    assert report.created == 1
    assert report.rejected == 7
    assert sorted((error.line, error.field) for error in report.errors) == [
        (3, "serial"),
        (4, "mac"),
        (5, "factory_secret"),
        (6, "serial"),
        (7, "serial"),
        (8, "serial"),
        (9, "serial"),
    ]
    decommissioned = next(error for error in report.errors if error.line == 7)
    assert decommissioned.kind == "decommissioned"


def test_import_writes_in_batches_and_reports_progress(system_actor: Actor) -> None:
    rows = [import_row(f"BULK-{index:05d}") for index in range(2500)]
    calls: list[int] = []
    report = boxes_import(actor=system_actor, rows=rows, progress=lambda r: calls.append(r.total))
    assert report.created == 2500
    assert calls == [1000, 2000, 2500]
    assert Box.objects.filter(serial__startswith="BULK-").count() == 2500


# -- enrollment ------------------------------------------------------------------------------------


def test_enroll_with_factory_secret_issues_one_live_credential(
    box_factory: Any, provisioned_region: Any
) -> None:
    # given an imported box
    box = box_factory()
    # when it enrolls twice (a factory reset in between)
    _, first = box_enroll(
        serial=box.serial, factory_secret=FACTORY_SECRET, wg_public_key=WG_KEY, source_ip="10.0.0.1"
    )
    enrolled, second = box_enroll(serial=box.serial, factory_secret=FACTORY_SECRET, source_ip="10.0.0.1")
    # then only the second token is live
    assert first != second
    live = AgentCredential.objects.filter(box=box, revoked_at__isnull=True)
    assert list(live.values_list("token_hash", flat=True)) == [digest(second)]
    assert AgentCredential.objects.filter(box=box).count() == 2
    assert enrolled.enrolled_at is not None
    assert Box.objects.get(pk=box.pk).wg_public_key == WG_KEY
    assert AuditLog.objects.filter(box=box, action="box.enroll").count() == 2


def test_re_enroll_with_a_new_wireguard_key_updates_the_tunnel_credential(
    people: Any, claimed_box_factory: Any
) -> None:
    # given a provisioned box enrolled with one key
    box = claimed_box_factory(people.org)
    box_enroll(serial=box.serial, factory_secret=FACTORY_SECRET, wg_public_key=WG_KEY, source_ip="10.0.0.1")
    hash_before = Box.objects.get(pk=box.pk).config_hash
    # when it re-enrolls with a new key
    box_enroll(
        serial=box.serial, factory_secret=FACTORY_SECRET, wg_public_key=OTHER_WG_KEY, source_ip="10.0.0.1"
    )
    # then the live WireGuard credential and the config hash follow
    credential = TunnelCredential.objects.get(box=box, kind=TunnelKind.WIREGUARD, revoked_at__isnull=True)
    assert credential.public_key == OTHER_WG_KEY
    assert Box.objects.get(pk=box.pk).config_hash != hash_before


def test_enroll_refuses_a_wrong_secret_and_an_unknown_serial(box_factory: Any) -> None:
    box = box_factory()
    with pytest.raises(NotAuthenticated):
        box_enroll(serial=box.serial, factory_secret="wrong-secret", source_ip="10.0.0.1")
    with pytest.raises(NotAuthenticated):
        box_enroll(serial="NO-SUCH-BOX", factory_secret=FACTORY_SECRET, source_ip="10.0.0.1")
    assert not AgentCredential.objects.exists()


def test_enroll_refuses_a_decommissioned_box(box_factory: Any) -> None:
    box = box_factory(state=BoxState.DECOMMISSIONED)
    with pytest.raises(Forbidden):
        box_enroll(serial=box.serial, factory_secret=FACTORY_SECRET, source_ip="10.0.0.1")


def test_enroll_validates_the_wireguard_key(box_factory: Any) -> None:
    box = box_factory()
    with pytest.raises(InvalidInput) as exc:
        box_enroll(
            serial=box.serial, factory_secret=FACTORY_SECRET, wg_public_key="not-a-key", source_ip="1.2.3.4"
        )
    assert exc.value.field == "wg_public_key"


def test_enroll_is_rate_limited_per_serial_before_the_secret_is_checked(
    box_factory: Any, settings: Any
) -> None:
    # given a limit of 3 failures per serial
    settings.OTB = {**settings.OTB, "ENROLL_MAX_FAILURES": 3}
    box = box_factory()
    for _ in range(3):
        with pytest.raises(NotAuthenticated):
            box_enroll(serial=box.serial, factory_secret="wrong-secret", source_ip="10.0.0.1")
    # when the right secret comes next
    with pytest.raises(RateLimited) as exc:
        box_enroll(serial=box.serial, factory_secret=FACTORY_SECRET, source_ip="10.0.0.2")
    # then it is refused anyway, with a retry delay
    assert 0 < exc.value.retry_after_s <= settings.OTB["AUTH_FAILURE_WINDOW_S"]
    assert not AgentCredential.objects.exists()


def test_enroll_is_rate_limited_per_source_ip(box_factory: Any, settings: Any) -> None:
    settings.OTB = {**settings.OTB, "ENROLL_MAX_FAILURES_PER_IP": 4}
    box = box_factory()
    for index in range(4):
        with pytest.raises(NotAuthenticated):
            box_enroll(serial=f"PROBE-{index}", factory_secret="wrong-secret", source_ip="198.51.100.9")
    with pytest.raises(RateLimited):
        box_enroll(serial=box.serial, factory_secret=FACTORY_SECRET, source_ip="198.51.100.9")
    # another address is not affected
    _, token = box_enroll(serial=box.serial, factory_secret=FACTORY_SECRET, source_ip="198.51.100.10")
    assert token.startswith("otba_")


def _enrollment_token(people: Any, **overrides: Any) -> tuple[EnrollmentToken, str]:
    options = {"name": "rollout", "expires_in_hours": 24, "single_use": True, **overrides}
    return enrollment_token_create(actor=Actor.for_user(people.owner), organization=people.org, **options)


def test_enrollment_token_creates_claims_and_provisions_an_unknown_box(
    people: Any, provisioned_region: Any
) -> None:
    _, value = _enrollment_token(people)
    box, token = box_enroll(
        serial="NEW-0001",
        enrollment_token=value,
        wg_public_key=WG_KEY,
        mac="02:00:00:00:00:01",
        source_ip="10.0.0.1",
    )
    box.refresh_from_db()
    assert (box.state, box.organization_id) == (BoxState.CLAIMED, people.org.pk)
    assert box.server_id == provisioned_region.server.pk
    assert box.config_hash
    assert TunnelCredential.objects.get(box=box, kind=TunnelKind.WIREGUARD).public_key == WG_KEY
    assert token.startswith("otba_")


def test_single_use_enrollment_token_works_once(people: Any, provisioned_region: Any) -> None:
    _, value = _enrollment_token(people, single_use=True)
    box_enroll(serial="NEW-0001", enrollment_token=value, source_ip="10.0.0.1")
    with pytest.raises(NotAuthenticated):
        box_enroll(serial="NEW-0002", enrollment_token=value, source_ip="10.0.0.1")
    assert not Box.objects.filter(serial="NEW-0002").exists()


def test_expired_or_revoked_enrollment_tokens_are_refused(people: Any, provisioned_region: Any) -> None:
    expired, expired_value = _enrollment_token(people, single_use=False)
    EnrollmentToken.objects.filter(pk=expired.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    revoked, revoked_value = _enrollment_token(people, single_use=False)
    enrollment_token_revoke(actor=Actor.for_user(people.owner), token=revoked)
    for value in (expired_value, revoked_value, "otbe_made-up"):
        with pytest.raises(NotAuthenticated):
            box_enroll(serial="NEW-0001", enrollment_token=value, source_ip="10.0.0.1")
    assert not Box.objects.filter(serial="NEW-0001").exists()


def test_enrollment_token_cannot_take_another_organisations_box(
    people: Any, claimed_box_factory: Any
) -> None:
    theirs = claimed_box_factory(people.other_org)
    _, value = _enrollment_token(people, single_use=False)
    with pytest.raises(Forbidden):
        box_enroll(serial=theirs.serial, enrollment_token=value, source_ip="10.0.0.1")
    assert Box.objects.get(pk=theirs.pk).organization_id == people.other_org.pk


# -- configuration applied -------------------------------------------------------------------------


def test_config_applied_records_hash_time_and_capped_error(people: Any, claimed_box_factory: Any) -> None:
    box = claimed_box_factory(people.org)
    box_config_applied(box=box, config_hash=box.config_hash)
    box.refresh_from_db()
    assert box.applied_config_hash == box.config_hash and not box.config_drift
    assert box.applied_at is not None
    from fleet.core.models import Event

    assert Event.objects.filter(box_id=box.pk, kind="config_applied").count() == 1
    box_config_applied(box=box, config_hash="ab" * 32, error="é" * 5000)
    box.refresh_from_db()
    assert len(box.apply_error.encode()) <= 4096
    assert box.config_drift
    assert Event.objects.filter(box_id=box.pk, kind="config_failed").count() == 1


def test_config_applied_refuses_a_non_hash(people: Any, box_factory: Any) -> None:
    box = box_factory()
    with pytest.raises(InvalidInput) as exc:
        box_config_applied(box=box, config_hash="not hex!")
    assert exc.value.field == "config_hash"


# -- box settings ----------------------------------------------------------------------------------


def test_box_update_cleans_tags(people: Any, box_factory: Any) -> None:
    box = box_factory(organization=people.org)
    box = box_update(actor=Actor.for_user(people.admin), box=box, name=" Paris office ", tags=["a", "b", "a"])
    assert (box.name, box.tags) == ("Paris office", ["a", "b"])
    with pytest.raises(InvalidInput) as exc:
        box_update(actor=Actor.for_user(people.admin), box=box, tags=["ok", "not ok"])
    assert exc.value.field == "tags[1]"


@pytest.mark.parametrize(
    ("mode", "interfaces", "field"),
    [
        ("turbo", [], "mode"),
        ("aggregate", "eth0", "interfaces"),
        ("aggregate", [{"name": "eth0"}, {"name": "eth1"}, {"name": "eth0"}], "interfaces[2].name"),
        ("aggregate", [{"name": "Eth 0"}], "interfaces[0].name"),
        ("aggregate", [{"name": "eth0", "role": "boss"}], "interfaces[0].role"),
        ("aggregate", [{"name": "eth0", "kind": "carrier-pigeon"}], "interfaces[0].kind"),
        ("aggregate", [{"name": "eth0", "up_kbps": 10_000_001}], "interfaces[0].up_kbps"),
        ("aggregate", [{"name": "eth0", "down_kbps": 0}], "interfaces[0].down_kbps"),
        ("aggregate", [{"name": "eth0", "down_kbps": True}], "interfaces[0].down_kbps"),
        ("aggregate", [{"name": "eth0", "colour": "red"}], "interfaces[0].colour"),
        ("failover", [{"name": "eth0", "role": "backup"}], "interfaces"),
        ("load-balance", [{"name": "eth0", "role": "disabled"}], "interfaces"),
        ("aggregate", [{"name": f"eth{index}"} for index in range(17)], "interfaces"),
    ],
)
def test_wan_policy_validation_names_the_field(
    people: Any, box_factory: Any, mode: str, interfaces: Any, field: str
) -> None:
    box = box_factory(organization=people.org)
    with pytest.raises(InvalidInput) as exc:
        box_set_wan_policy(actor=Actor.for_user(people.admin), box=box, mode=mode, interfaces=interfaces)
    assert exc.value.field == field
    assert Box.objects.get(pk=box.pk).wan_policy == {"mode": "aggregate", "interfaces": []}


def test_wan_policy_change_bumps_the_config_hash_and_is_audited(
    people: Any, claimed_box_factory: Any
) -> None:
    box = claimed_box_factory(people.org)
    before = box.config_hash
    policy: list[dict[str, Any]] = [
        {"name": "wan1", "role": "primary", "kind": "fiber", "down_kbps": 1_000_000, "up_kbps": 500_000},
        {"name": "lte0", "role": "backup", "kind": "lte"},
    ]
    box = box_set_wan_policy(actor=Actor.for_user(people.admin), box=box, mode="failover", interfaces=policy)
    stored = Box.objects.get(pk=box.pk)
    assert stored.wan_policy["mode"] == "failover"
    assert stored.wan_policy["interfaces"][1] == {"name": "lte0", "role": "backup", "kind": "lte"}
    assert stored.config_hash != before
    entry = AuditLog.objects.get(box=box, action="box.set_wan_policy")
    assert entry.before == {"mode": "aggregate", "interfaces": []}
    assert entry.after is not None and entry.after["mode"] == "failover"
