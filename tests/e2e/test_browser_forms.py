"""Forms in a real browser: every refusal is shown next to the field it is about, in a sentence, and
nothing changes behind the person's back (issue #15: htmx used to drop every 4xx answer).

Few tests, each walking through several forms of one page or one person, to stay fast."""

from __future__ import annotations

import re
from typing import Any

import pytest
from django.utils import timezone

from fleet.commands.models import Command
from fleet.core.audit import Actor
from fleet.core.models import Membership
from fleet.core.services import member_invite
from fleet.firmware.models import BoxUpgradePolicy
from fleet.monitoring.models import AlertRule, NotificationTarget
from fleet.telemetry.models import WanStatus
from tests.conftest import PASSWORD
from tests.e2e.browser import screenshot, sign_in, wait_until
from tests.fleet.firmware.firmware_helpers import make_fleet, make_release

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]


def sentence(text: str) -> bool:
    """A message written for people: starts with a capital letter, ends with a full stop."""
    text = text.strip()
    return bool(text) and text[0].isupper() and text[-1] in ".!?"


def visible_error(page: Any, selector: str) -> str:
    error = page.locator(selector)
    error.wait_for(state="visible")
    text = error.inner_text()
    assert sentence(text), text
    return text


def test_browser_box_page_forms_show_their_errors(
    transactional_db, page, people, claimed_box_factory
) -> None:
    # given a box with two reported links, and its admin on its page
    box = claimed_box_factory(people.org, "FORMS-0001")
    now = timezone.now()
    for iface, label in (("wan", "Fiber"), ("wan2", "4G")):
        WanStatus.objects.create(
            box=box, iface=iface, label=label, kind="fiber", up=True, up_changed_at=now, updated_at=now
        )
    policy_before = box.wan_policy
    sign_in(page, "admin@example.com", PASSWORD)
    page.goto(f"/boxes/{box.pk}/")

    # when they save a failover policy with every link on backup
    page.get_by_label("Mode").select_option("failover")
    roles = page.locator("#policy-form select[name^='role_']")
    for index in range(roles.count()):
        roles.nth(index).select_option("backup")
    page.get_by_role("button", name="Save policy").click()
    # then the refusal is shown by the links' roles, and nothing was saved
    assert "primary" in visible_error(page, "#policy-roles-errors").lower()
    box.refresh_from_db()
    assert box.wan_policy == policy_before

    # when they pick no command at all, then reboot without confirming
    kind = page.get_by_label("Command", exact=True)
    assert kind.input_value() == ""  # no command is chosen for them
    page.get_by_role("button", name="Send").click()
    visible_error(page, "#id_command_kind-errors")
    page.get_by_label("Command", exact=True).select_option("reboot")
    page.get_by_role("button", name="Send").click()
    # then they are asked to confirm, next to the confirmation, and nothing is sent
    assert "Reboot" in visible_error(page, "#id_command_confirm-errors")
    assert not Command.objects.filter(box=box).exists()
    # when they confirm, the reboot is sent
    page.locator("#id_command_confirm").check()
    page.get_by_role("button", name="Send").click()
    wait_until(lambda: Command.objects.filter(box=box, kind="reboot").exists(), message="reboot not sent")

    # when they clear every day of the maintenance window and save
    page.goto(f"/boxes/{box.pk}/#firmware")
    days = page.locator("#firmware-settings input[name='window_days']")
    for index in range(days.count()):
        days.nth(index).uncheck()
    page.locator("#firmware-settings").get_by_role("button", name="Save").click()
    # then the refusal is next to the days, and the window is unchanged
    visible_error(page, "#id_window_days-errors")
    assert not BoxUpgradePolicy.objects.filter(box=box).exists()
    # when they choose Saturday 01:00 to 04:00, it is saved
    page.locator("#firmware-settings input[name='window_days'][value='5']").check()
    page.get_by_label("Window starts").fill("01:00")
    page.get_by_label("Window ends").fill("04:00")
    page.locator("#firmware-settings").get_by_role("button", name="Save").click()
    page.wait_for_load_state()
    wait_until(
        lambda: BoxUpgradePolicy.objects.filter(box=box, window_days=[5]).exists(), message="not saved"
    )
    screenshot(page, "test_browser_box_page_forms_show_their_errors")
    # when their role is lowered meanwhile, a save is refused (403): the page says so, in words
    Membership.objects.filter(user=people.admin, organization=people.org).update(role="viewer")
    page.get_by_label("Mode").select_option("aggregate")
    page.get_by_role("button", name="Save policy").click()
    assert "403" in visible_error(page, "#request-error")
    assert [e for e in page.errors if "Content Security Policy" in e] == []


def test_browser_sign_in_and_fleet_search_explain_bad_input(
    transactional_db, page, people, box_factory
) -> None:
    box_factory("ACME-0001", organization=people.org, name="Paris office")
    box_factory("ACME-0002", organization=people.org, name="Lyon office")
    # when someone signs in with empty fields, each field says what is missing
    page.goto("/accounts/login/")
    page.get_by_role("button", name="Sign in").click()
    visible_error(page, "#id_username-errors")
    visible_error(page, "#id_password-errors")
    sign_in(page, "viewer@example.com", PASSWORD)
    # when a search longer than the limit is typed, the search field says so and no box is listed
    page.get_by_label("Search").fill("x" * 101)
    assert "100" in visible_error(page, "#id_q-errors")
    assert page.locator("tr[data-box]").count() == 0
    # when the search is shortened, the error goes and the boxes match again
    page.get_by_label("Search").fill("Paris")
    page.locator("#id_q-errors").wait_for(state="detached")
    wait_until(lambda: page.locator("tr[data-box]").count() == 1, message="search did not run")
    # a page number that is not one says so, and the first page is shown
    page.goto("/boxes/?page=abc")
    assert "abc" in visible_error(page, "#fleet-page-error")
    assert page.locator("tr[data-box]").count() == 2
    screenshot(page, "test_browser_sign_in_and_fleet_search_explain_bad_input")


def test_browser_staff_rollout_preview_explains_bad_input(transactional_db, page, people) -> None:
    make_release("3.0.0")
    make_fleet(3, organization=people.org, version="2.0.0")
    sign_in_url = "**/console/**"
    page.goto("/accounts/login/")
    page.get_by_label("Email or username").fill("staff@example.com")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(sign_in_url)
    # staff get the console menu, not the customers' one
    menu = page.get_by_role("navigation", name="Main")
    assert menu.get_by_role("link", name="Rollouts").is_visible()
    assert menu.get_by_role("link", name="Claim a box").count() == 0

    # when a preview has no name and phases that go down and past 100
    page.goto("/console/rollouts/new/")
    page.get_by_label("Name").fill("")
    page.get_by_label("Phases (% of eligible boxes)").fill("10, 5, 200")
    page.get_by_role("button", name="Preview").click()
    # then both fields say what is wrong
    visible_error(page, "#id_name-errors")
    visible_error(page, "#id_phases-errors")
    # when the "from version" is not a version
    page.get_by_label("Name").fill("3.0.0 for everyone")
    page.get_by_label("Phases (% of eligible boxes)").fill("50, 100")
    page.get_by_label("From version (included)").fill("abc")
    page.get_by_role("button", name="Preview").click()
    assert "abc" in visible_error(page, "#id_version_min-errors")
    # when the model is typed in lower case, it still matches the boxes
    page.get_by_label("From version (included)").fill("")
    page.get_by_label("Hardware models").fill("otb-V2C")
    page.get_by_role("button", name="Preview").click()
    page.locator("#preview-matched").wait_for()
    assert page.locator("#preview-matched").inner_text() == "3"
    assert page.locator("#id_phases-errors").count() == 0
    screenshot(page, "test_browser_staff_rollout_preview_explains_bad_input")


def test_browser_invited_person_creates_an_account_and_edits_an_alert_rule(
    transactional_db, page, people
) -> None:
    # given an invitation for someone without an account
    _invitation, token = member_invite(
        actor=Actor.for_user(people.owner),
        organization=people.org,
        email="new.person@example.com",
        role="admin",
    )
    # when they open the link from the email and choose passwords that differ
    page.goto(f"/invitations/accept#{token}")
    assert page.get_by_label("Invitation token").input_value() == token
    page.get_by_label("Choose a password").fill("a-long-enough-passphrase")
    page.get_by_label("Password again").fill("something else entirely")
    page.get_by_role("button", name="Create my account").click()
    visible_error(page, "#id_password2-errors")
    # when they type it twice the same, they are signed in as a member of the organisation
    page.get_by_label("Invitation token").fill(token)
    page.get_by_label("Choose a password").fill("a-long-enough-passphrase")
    page.get_by_label("Password again").fill("a-long-enough-passphrase")
    page.get_by_role("button", name="Create my account").click()
    page.wait_for_url("**/boxes/**")
    assert Membership.objects.filter(user__email="new.person@example.com", organization=people.org).exists()

    # given an alert rule with a notification target
    target = NotificationTarget.objects.create(
        organization=people.org, name="Ops mail", kind="email", email="ops@example.com"
    )
    rule = AlertRule.objects.create(organization=people.org, name="Lossy", kind="loss_above", threshold=5)
    rule.targets.set([target])
    # when the new admin edits it with a threshold out of range
    page.goto("/alerts/")
    page.get_by_role("link", name=re.compile("Edit")).first.click()
    page.get_by_label("Threshold").fill("250")
    page.get_by_role("button", name="Save rule").click()
    visible_error(page, "#id_rule_threshold-errors")
    rule.refresh_from_db()
    assert rule.threshold == 5
    # when it is in range it is saved, and a test notification can be sent
    page.get_by_label("Threshold").fill("7.5")
    page.get_by_role("button", name="Save rule").click()
    page.wait_for_url("**/alerts/")
    assert AlertRule.objects.get(pk=rule.pk).threshold == 7.5
    page.get_by_role("link", name=re.compile("Edit")).first.click()
    page.get_by_role("button", name="Send a test notification").click()
    assert "Ops mail" in page.locator(".messages").inner_text()
    screenshot(page, "test_browser_invited_person_creates_an_account_and_edits_an_alert_rule")
