"""Enrollment (provisioning.services.enrollment): with the factory secret or an organisation's
enrollment token, one live credential, the WireGuard key, rate limits."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from fleet.core.audit import Actor
from fleet.core.choices import BoxState
from fleet.core.errors import Forbidden, InvalidInput, NotAuthenticated, RateLimited
from fleet.core.models import AgentCredential, AuditLog, Box, EnrollmentToken
from fleet.core.services import enrollment_token_create, enrollment_token_revoke
from fleet.core.tokens import digest
from provisioning.choices import TunnelKind
from provisioning.models import TunnelCredential
from provisioning.services.enrollment import box_enroll
from tests.conftest import FACTORY_SECRET, WG_KEY

OTHER_WG_KEY = "b3RoZXIta2V5LXRoYXQtaXMtMzItYnl0ZXMtbG9uZyE="

pytestmark = pytest.mark.django_db


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
