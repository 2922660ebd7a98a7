"""Signing in and out, password reset, the organisation switcher, invitations, security headers."""

from __future__ import annotations

import re

import pytest
from django.contrib.auth.models import User
from django.core import mail
from django.test import Client

from fleet.core.audit import Actor
from fleet.core.models import AuditLog, Membership
from fleet.core.services import member_invite
from tests.conftest import PASSWORD

pytestmark = pytest.mark.django_db


def logged_in(user: User) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_root_sends_anonymous_people_to_sign_in() -> None:
    # given an anonymous visitor / when they open the root URL
    response = Client().get("/")
    # then they are sent to the sign-in page
    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/")


def test_root_sends_a_member_to_the_fleet_page(people) -> None:
    response = logged_in(people.viewer).get("/")
    assert response.status_code == 302
    assert response["Location"] == "/boxes/"


def test_sign_in_with_the_right_password_then_sign_out(people) -> None:
    # given the sign-in page
    client = Client()
    page = client.get("/accounts/login/")
    assert page.status_code == 200
    assert b'<label for="id_username">' in page.content
    # when the owner signs in
    response = client.post("/accounts/login/", {"username": "owner@example.com", "password": PASSWORD})
    # then they land on the portal and are signed in
    assert response.status_code == 302
    assert client.get("/boxes/").status_code == 200
    # and signing out (POST only) ends the session
    assert client.get("/accounts/logout/").status_code == 405
    assert client.post("/accounts/logout/").status_code == 302
    assert client.get("/boxes/").status_code == 302


def test_sign_in_with_a_wrong_password_says_so(people) -> None:
    response = Client().post("/accounts/login/", {"username": "owner@example.com", "password": "nope"})
    assert response.status_code == 200
    assert b"correct" in response.content  # Django's "Please enter a correct username and password"


def test_password_reset_by_email(people) -> None:
    # given a person who forgot their password
    client = Client()
    # when they ask for a reset link
    response = client.post("/accounts/password-reset/", {"email": "viewer@example.com"})
    assert response.status_code == 302
    # then one email with a one-time link is sent
    assert len(mail.outbox) == 1
    body = mail.outbox[0].body
    assert isinstance(body, str)
    found = re.search(r"http://[^/]+(/accounts/reset/\S+)", body)
    assert found is not None
    link = found.group(1)
    # and following it lets them choose a new password
    form = client.get(link, follow=True)
    assert form.status_code == 200
    set_url = form.redirect_chain[-1][0] if form.redirect_chain else link
    done = client.post(set_url, {"new_password1": "a-new-Passw0rd!", "new_password2": "a-new-Passw0rd!"})
    assert done.status_code == 302
    assert Client().login(username="viewer@example.com", password="a-new-Passw0rd!")


def test_switching_organisation_changes_the_fleet_page(people, box_factory) -> None:
    # given a person in two organisations, each with a box
    Membership.objects.create(user=people.viewer, organization=people.other_org, role="viewer")
    box_factory("ACME-1", organization=people.org)
    box_factory("GLOBEX-1", organization=people.other_org)
    client = logged_in(people.viewer)
    assert b"ACME-1" in client.get("/boxes/").content
    # when they switch to the other organisation
    response = client.post(
        "/organization/switch/", {"organization": str(people.other_org.pk), "next": "/boxes/"}
    )
    # then the fleet page shows that organisation's boxes only
    assert response.status_code == 302
    page = client.get("/boxes/").content
    assert b"GLOBEX-1" in page and b"ACME-1" not in page


def test_switching_to_a_foreign_organisation_is_not_found(people) -> None:
    response = logged_in(people.viewer).post(
        "/organization/switch/", {"organization": str(people.other_org.pk)}
    )
    assert response.status_code == 404
    response = logged_in(people.viewer).post("/organization/switch/", {"organization": "not-a-uuid"})
    assert response.status_code == 404


def test_accepting_an_invitation_joins_the_organisation(people, user_factory) -> None:
    # given an invitation for a person who has an account
    newcomer = user_factory("newcomer@example.com")
    _, token = member_invite(
        actor=Actor.for_user(people.owner),
        organization=people.org,
        email="newcomer@example.com",
        role="admin",
    )
    client = logged_in(newcomer)
    # when a wrong token is pasted, the field says why; the right one joins
    bad = client.post("/invitations/accept", {"token": "otbi_wrong"})
    assert bad.status_code == 400
    assert b"This invitation does not exist or has expired" in bad.content
    assert b'id="id_token-errors"' in bad.content
    good = client.post("/invitations/accept", {"token": token})
    # then the newcomer is an admin of the organisation
    assert good.status_code == 302
    assert Membership.objects.get(user=newcomer, organization=people.org).role == "admin"


def test_pages_carry_a_strict_content_security_policy(people) -> None:
    response = logged_in(people.viewer).get("/boxes/")
    policy = response["Content-Security-Policy"]
    assert "default-src 'self'" in policy
    assert "script-src 'self'" in policy and "unsafe-inline" not in policy
    assert "connect-src 'self' ws: wss:" in policy
    assert response["X-Frame-Options"] == "DENY"
    assert b"<script>" not in response.content  # no inline script anywhere


def test_a_person_without_organisation_is_told_what_to_do(user_factory) -> None:
    response = logged_in(user_factory("lonely@example.com")).get("/boxes/")
    assert response.status_code == 200
    assert b"not in an organisation yet" in response.content


@pytest.mark.parametrize("url", ["/accounts/login/", "/admin/login/"])
def test_repeated_failed_sign_ins_are_refused_before_the_password_is_checked(people, settings, url) -> None:
    # given at most 3 failed sign-ins per username
    settings.OTB = {**settings.OTB, "LOGIN_MAX_FAILURES": 3}
    staff = people.staff
    client = Client()
    # when 3 attempts fail
    for _ in range(3):
        response = client.post(url, {"username": staff.username, "password": "wrong-password"})
        assert response.status_code == 200
    # then the 4th, even with the right password, is refused with 429 and a clear message
    response = client.post(url, {"username": staff.username, "password": PASSWORD})
    assert response.status_code == 429
    assert b"Too many failed sign-in attempts" in response.content
    assert "_auth_user_id" not in client.session
    # and another username from the same address is not affected
    other = Client().post(url, {"username": people.owner.username, "password": PASSWORD})
    assert other.status_code in (200, 302)


def test_a_successful_sign_in_clears_the_failures(people, settings) -> None:
    settings.OTB = {**settings.OTB, "LOGIN_MAX_FAILURES": 3}
    client = Client()
    for _ in range(2):
        client.post("/accounts/login/", {"username": people.viewer.username, "password": "nope-nope"})
    assert (
        client.post(
            "/accounts/login/", {"username": people.viewer.username, "password": PASSWORD}
        ).status_code
        == 302
    )
    client.logout()
    # two more failures do not reach the limit: the window started again
    for _ in range(2):
        client.post("/accounts/login/", {"username": people.viewer.username, "password": "nope-nope"})
    assert (
        client.post(
            "/accounts/login/", {"username": people.viewer.username, "password": PASSWORD}
        ).status_code
        == 302
    )


def test_too_many_failures_from_one_address_are_refused(people, settings) -> None:
    settings.OTB = {**settings.OTB, "LOGIN_MAX_FAILURES_PER_IP": 4}
    client = Client(REMOTE_ADDR="203.0.113.9")
    for index in range(4):
        client.post("/accounts/login/", {"username": f"nobody{index}@example.com", "password": "x-x-x-x-x"})
    response = client.post("/accounts/login/", {"username": people.viewer.username, "password": PASSWORD})
    assert response.status_code == 429
    assert (
        Client(REMOTE_ADDR="203.0.113.10")
        .post("/accounts/login/", {"username": people.viewer.username, "password": PASSWORD})
        .status_code
        == 302
    )


def test_admin_sign_in_still_works_for_staff_only(people) -> None:
    client = Client()
    page = client.get("/admin/login/")
    assert page.status_code == 200 and b'name="password"' in page.content
    # a customer is refused by the admin form
    refused = client.post("/admin/login/", {"username": people.owner.username, "password": PASSWORD})
    assert refused.status_code == 200 and "_auth_user_id" not in client.session
    # staff get in and land on the admin index
    response = client.post("/admin/login/", {"username": people.staff.username, "password": PASSWORD})
    assert response.status_code == 302 and response["Location"] == "/admin/"
    assert client.get("/admin/").status_code == 200


def test_signing_in_with_empty_fields_says_which_is_missing(people, settings) -> None:
    settings.OTB = {**settings.OTB, "LOGIN_MAX_FAILURES_PER_IP": 2}
    client = Client()
    # when both fields are left empty, each says so (and it is not counted as a failed sign-in)
    for _ in range(3):
        response = client.post("/accounts/login/", {"username": "", "password": ""})
        assert response.status_code == 200
        content = response.content.decode()
        assert re.search(r'id="id_username-errors"[^>]*><li>Type the email address or username of', content)
        assert re.search(r'id="id_password-errors"[^>]*><li>Type your password\.', content)
    # then a real sign-in from the same address still works
    response = client.post("/accounts/login/", {"username": people.viewer.username, "password": PASSWORD})
    assert response.status_code == 302


def test_staff_without_organisation_get_the_console_menu(people) -> None:
    client = logged_in(people.staff)
    # the portal's pages send them to the console, whose menu is theirs
    assert client.get("/boxes/")["Location"] == "/console/"
    content = client.get("/console/").content.decode()
    menu = content.split('aria-label="Main"', 1)[1].split("</nav>", 1)[0]
    assert "Rollouts" in menu and "Audit log" in menu and "Find a box" in menu
    assert "Claim a box" not in menu and "API tokens" not in menu
    assert "not in an organisation yet" not in client.get("/console/search/").content.decode()


def test_staff_who_belong_to_an_organisation_switch_between_portal_and_console(people) -> None:
    Membership.objects.create(user=people.staff, organization=people.org, role="viewer")
    client = logged_in(people.staff)
    portal = client.get("/boxes/").content.decode().split('aria-label="Main"', 1)[1].split("</nav>", 1)[0]
    assert "Claim a box" in portal and "Support console" in portal
    console = client.get("/console/").content.decode().split('aria-label="Main"', 1)[1].split("</nav>", 1)[0]
    assert "Rollouts" in console and "Customer portal" in console and "Claim a box" not in console


def test_an_invitation_link_creates_the_account_of_a_new_person(
    people, django_capture_on_commit_callbacks
) -> None:
    # given an invitation for an address that has no account, mailed with a link
    with django_capture_on_commit_callbacks(execute=True):
        _, token = member_invite(
            actor=Actor.for_user(people.owner),
            organization=people.org,
            email="New@Example.com",
            role="viewer",
        )
    (email,) = mail.outbox
    # the token travels after "#" (never to a server log), and alone for pasting
    assert f"/invitations/accept#{token}" in email.body
    client = Client()
    # the page asks an anonymous visitor for a password
    page = client.get("/invitations/accept").content.decode()
    assert 'name="password1"' in page and "data-token-from-link" in page
    # passwords that differ, or too short, are said next to the field; no account is made
    differ = client.post(
        "/invitations/accept", {"token": token, "password1": "a-long-passphrase", "password2": "another-one"}
    )
    assert differ.status_code == 400
    assert re.search(
        r'id="id_password2-errors"[^>]*><li>The two passwords are not the same', differ.content.decode()
    )
    short = client.post("/invitations/accept", {"token": token, "password1": "abc", "password2": "abc"})
    assert short.status_code == 400
    assert re.search(r'id="id_password1-errors"[^>]*><li>This password is too short', short.content.decode())
    assert not User.objects.filter(email__iexact="new@example.com").exists()
    # when the passwords match, the account exists, the person is signed in and a member
    done = client.post(
        "/invitations/accept",
        {"token": token, "password1": "a-long-passphrase", "password2": "a-long-passphrase"},
    )
    assert done.status_code == 302 and done["Location"] == "/boxes/"
    user = User.objects.get(email__iexact="new@example.com")
    assert user.check_password("a-long-passphrase")
    assert Membership.objects.get(user=user, organization=people.org).role == "viewer"
    assert int(client.session["_auth_user_id"]) == user.pk
    assert "Welcome!" in client.get("/boxes/").content.decode()
    assert AuditLog.objects.filter(action="member.sign_up", organization=people.org).exists()
    # and the token works once
    again = Client().post(
        "/invitations/accept", {"token": token, "password1": "x-y-z-w-v-u", "password2": "x-y-z-w-v-u"}
    )
    assert again.status_code == 400 and b"already accepted" in again.content


def test_an_invitation_for_an_existing_account_asks_to_sign_in_first(people) -> None:
    _, token = member_invite(
        actor=Actor.for_user(people.outsider),
        organization=people.other_org,
        email="viewer@example.com",
        role="viewer",
    )
    response = Client().post(
        "/invitations/accept",
        {"token": token, "password1": "a-long-passphrase", "password2": "a-long-passphrase"},
    )
    assert response.status_code == 400
    assert b"There is already an account for viewer@example.com: sign in with it" in response.content
    assert not Membership.objects.filter(user=people.viewer, organization=people.other_org).exists()
