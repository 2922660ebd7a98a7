"""Members and invitations, personal API tokens, alert rules and notification targets."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.contrib.auth.models import User
from django.core import mail
from django.test import Client
from django.utils import timezone

from fleet.core.models import ApiToken, Invitation, Membership
from fleet.monitoring.models import AlertRule, NotificationTarget

pytestmark = pytest.mark.django_db


def logged_in(user: User) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_owner_invites_and_changes_roles(people, django_capture_on_commit_callbacks) -> None:
    client = logged_in(people.owner)
    page = client.get("/members/").content.decode()
    assert "viewer@example.com" in page and "Invite someone" in page
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post("/members/", {"email": "new@example.com", "role": "admin"})
    assert response.status_code == 302
    assert Invitation.objects.filter(email="new@example.com", role="admin").exists()
    assert len(mail.outbox) == 1
    viewer = Membership.objects.get(user=people.viewer)
    client.post(f"/members/{viewer.pk}/role/", {"role": "admin"})
    viewer.refresh_from_db()
    assert viewer.role == "admin"


def test_invitation_errors_name_the_field(people) -> None:
    response = logged_in(people.owner).post("/members/", {"email": "viewer@example.com", "role": "admin"})
    assert response.status_code == 400
    assert "already a member" in response.content.decode()


def test_admins_and_viewers_cannot_manage_people(people) -> None:
    for user in (people.admin, people.viewer):
        client = logged_in(user)
        assert "Only owners can invite" in client.get("/members/").content.decode()
        assert client.post("/members/", {"email": "x@example.com", "role": "viewer"}).status_code == 403
    owner_membership = Membership.objects.get(user=people.owner)
    assert logged_in(people.admin).post(f"/members/{owner_membership.pk}/remove/").status_code == 403
    assert Membership.objects.filter(pk=owner_membership.pk).exists()


def test_members_of_another_organisation_are_not_found(people) -> None:
    foreign = Membership.objects.get(user=people.outsider)
    assert logged_in(people.owner).post(f"/members/{foreign.pk}/remove/").status_code == 404


def test_api_token_is_shown_once_then_revoked(people) -> None:
    client = logged_in(people.viewer)
    response = client.post("/tokens/", {"name": "grafana", "expires_in_days": "30"})
    assert response.status_code == 200
    content = response.content.decode()
    token = ApiToken.objects.get(user=people.viewer)
    assert 'id="new-token"' in content and token.token_prefix in content
    assert response["Cache-Control"] == "no-store"
    # the value is never shown again
    assert 'id="new-token"' not in client.get("/tokens/").content.decode()
    assert client.post(f"/tokens/{token.pk}/revoke/").status_code == 302
    token.refresh_from_db()
    assert token.revoked_at is not None
    # someone else's token is not found
    other = ApiToken.objects.create(
        user=people.owner,
        organization=people.org,
        name="o",
        token_prefix="x",
        token_hash="h" * 64,
        expires_at=token.expires_at,
    )
    assert client.post(f"/tokens/{other.pk}/revoke/").status_code == 404


def test_api_token_form_errors(people) -> None:
    response = logged_in(people.viewer).post("/tokens/", {"name": "", "expires_in_days": "9999"})
    assert response.status_code == 400
    assert not ApiToken.objects.filter(user=people.viewer).exists()


def test_alert_rules_and_targets(people) -> None:
    client = logged_in(people.admin)
    assert client.get("/alerts/").status_code == 200
    response = client.post(
        "/alerts/", {"form": "target", "name": "NOC", "kind": "email", "email": "noc@example.com"}
    )
    assert response.status_code == 302
    target = NotificationTarget.objects.get(organization=people.org)
    response = client.post(
        "/alerts/",
        {
            "form": "rule",
            "name": "Loss",
            "kind": "loss_above",
            "threshold": "5",
            "duration_minutes": "5",
            "targets": [str(target.pk)],
        },
    )
    assert response.status_code == 302
    rule = AlertRule.objects.get(organization=people.org)
    assert list(rule.targets.all()) == [target]
    # a loss rule without threshold is refused, naming the field
    refused = client.post(
        "/alerts/", {"form": "rule", "name": "Bad", "kind": "loss_above", "duration_minutes": "5"}
    )
    assert refused.status_code == 400 and "threshold" in refused.content.decode()
    # disable, then delete
    client.post(f"/alerts/rule/{rule.pk}/disable/")
    rule.refresh_from_db()
    assert rule.enabled is False
    client.post(f"/alerts/rule/{rule.pk}/delete/")
    assert not AlertRule.objects.exists()


def test_open_alerts_show_firing_and_pending(people, claimed_box_factory) -> None:
    from django.utils import timezone

    from fleet.monitoring.choices import AlertRuleKind, AlertState
    from fleet.monitoring.models import Alert

    # given a firing and a pending alert, and a resolved one
    box = claimed_box_factory(people.org, "ACME-0500")
    rule = AlertRule.objects.create(organization=people.org, name="Down", kind=AlertRuleKind.WAN_DOWN)
    for iface, state in (
        ("wan0", AlertState.FIRING),
        ("wan1", AlertState.PENDING),
        ("wan2", AlertState.RESOLVED),
    ):
        Alert.objects.create(
            rule=rule, organization=people.org, box=box, iface=iface, state=state, started_at=timezone.now()
        )
    # when the alerts page is shown
    content = logged_in(people.viewer).get("/alerts/").content.decode()
    # then the two open ones are listed with their state, the resolved one is not
    assert '<span class="badge bad">Firing</span>' in content
    assert '<span class="badge warn">Pending</span>' in content
    assert "wan0" in content and "wan1" in content and "wan2" not in content


def test_viewers_cannot_change_alerts(people) -> None:
    client = logged_in(people.viewer)
    response = client.post(
        "/alerts/", {"form": "target", "name": "NOC", "kind": "email", "email": "noc@example.com"}
    )
    assert response.status_code == 403
    assert not NotificationTarget.objects.exists()


def test_owners_resend_and_revoke_pending_invitations(people, django_capture_on_commit_callbacks) -> None:
    client = logged_in(people.owner)
    with django_capture_on_commit_callbacks(execute=True):
        client.post("/members/", {"email": "late@example.com", "role": "viewer"})
    invitation = Invitation.objects.get(email="late@example.com")
    first_link = mail.outbox[0].body.split("#", 1)[1].split()[0]
    # a second invitation to the same address is refused next to the field: re-send instead
    twice = client.post("/members/", {"email": "late@example.com", "role": "admin"})
    assert twice.status_code == 400
    assert re.search(
        r'id="id_email-errors"[^>]*><li>There is already a pending invitation for late@example.com',
        twice.content.decode(),
    )
    # the list offers re-send and revoke
    page = client.get("/members/").content.decode()
    assert (
        f"/members/invitations/{invitation.pk}/resend/" in page
        and f"/members/invitations/{invitation.pk}/revoke/" in page
    )
    # re-sent: a new link, valid 7 days again; the old link no longer works
    with django_capture_on_commit_callbacks(execute=True):
        assert client.post(f"/members/invitations/{invitation.pk}/resend/").status_code == 302
    second_link = mail.outbox[1].body.split("#", 1)[1].split()[0]
    assert second_link != first_link
    newcomer = Client().post(
        "/invitations/accept",
        {"token": first_link, "password1": "a-long-passphrase", "password2": "a-long-passphrase"},
    )
    assert newcomer.status_code == 400 and b"does not exist or has expired" in newcomer.content
    # revoked: the new link stops working too, and the invitation leaves the list
    assert client.post(f"/members/invitations/{invitation.pk}/revoke/").status_code == 302
    invitation.refresh_from_db()
    assert invitation.revoked_at is not None
    content = client.get("/members/").content.decode()
    assert "The invitation to late@example.com is revoked: its link no longer works." in content
    assert f"/members/invitations/{invitation.pk}/" not in content
    newcomer = Client().post(
        "/invitations/accept",
        {"token": second_link, "password1": "a-long-passphrase", "password2": "a-long-passphrase"},
    )
    assert newcomer.status_code == 400
    # only owners may; another organisation's invitation is not found
    other = Invitation.objects.create(
        organization=people.other_org,
        email="x@example.com",
        role="viewer",
        token_hash="0" * 64,
        expires_at=invitation.expires_at,
    )
    assert logged_in(people.admin).post(f"/members/invitations/{invitation.pk}/resend/").status_code == 404
    assert client.post(f"/members/invitations/{other.pk}/revoke/").status_code == 404


def test_an_admin_cannot_resend_an_invitation(people) -> None:
    invitation = Invitation.objects.create(
        organization=people.org,
        email="x@example.com",
        role="viewer",
        token_hash="1" * 64,
        expires_at=timezone.now() + timedelta(days=1),
    )
    assert logged_in(people.admin).post(f"/members/invitations/{invitation.pk}/revoke/").status_code == 403
    invitation.refresh_from_db()
    assert invitation.revoked_at is None


def test_an_alert_rule_is_edited_with_errors_next_to_the_fields_and_tested(people) -> None:
    target = NotificationTarget.objects.create(
        organization=people.org, name="Ops mail", kind="email", email="ops@example.com"
    )
    rule = AlertRule.objects.create(organization=people.org, name="Lossy", kind="loss_above", threshold=5)
    client = logged_in(people.admin)
    url = f"/alerts/rule/{rule.pk}/"
    assert url in client.get("/alerts/").content.decode()
    # out of range: said next to the threshold, in a sentence with the unit; nothing saved
    refused = client.post(url, {"name": "Lossy", "threshold": "250", "duration_minutes": "5", "box": ""})
    assert refused.status_code == 400
    assert re.search(
        r'id="id_rule_threshold-errors"[^>]*><li>Give a threshold from 0 to below 100 %\.',
        refused.content.decode(),
    )
    rule.refresh_from_db()
    assert rule.threshold == 5
    # without targets, a test says the rule notifies nobody
    response = client.post(f"/alerts/rule/{rule.pk}/test/", follow=True)
    assert "This rule notifies nobody" in response.content.decode()
    # saved with a target, then tested: the email goes out and the page says so
    saved = client.post(
        url,
        {
            "name": "Lossy links",
            "threshold": "7.5",
            "duration_minutes": "10",
            "box": "",
            "targets": [str(target.pk)],
        },
    )
    assert saved.status_code == 302
    rule.refresh_from_db()
    assert (rule.name, rule.threshold, rule.duration_minutes) == ("Lossy links", 7.5, 10)
    assert list(rule.targets.all()) == [target]
    response = client.post(f"/alerts/rule/{rule.pk}/test/", follow=True)
    assert "Ops mail (email): sent to ops@example.com." in response.content.decode()
    assert mail.outbox[-1].subject == "[otb] TEST: Lossy links"
    # a viewer may look but not change or test
    viewer = logged_in(people.viewer)
    assert viewer.post(url, {"name": "x", "threshold": "1", "duration_minutes": "5"}).status_code == 403
    assert viewer.post(f"/alerts/rule/{rule.pk}/test/").status_code == 403
