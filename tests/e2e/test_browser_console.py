"""The support console in a real browser: a staff member previews, starts and pauses a rollout."""

from __future__ import annotations

import re

import pytest

from fleet.firmware.models import Rollout
from tests.conftest import PASSWORD
from tests.e2e.browser import screenshot
from tests.fleet.firmware.firmware_helpers import make_fleet, make_release

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]


def test_browser_staff_starts_a_rollout_and_pauses_it(transactional_db, page, people) -> None:
    # given a published release and boxes of a customer on an older version
    make_release("3.0.0")
    make_fleet(4, organization=people.org, version="2.0.0")
    page.goto("/accounts/login/")
    page.get_by_label("Email or username").fill("staff@example.com")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url("**/console/**")
    # when staff open a new rollout and preview it
    page.goto("/console/rollouts/new/")
    page.get_by_label("Name").fill("3.0.0 for Acme")
    page.get_by_label("Release").select_option(label="3.0.0 (stable)")
    page.get_by_label("Customers").select_option(label="Acme")
    page.get_by_label("Phases (% of eligible boxes)").fill("50, 100")
    page.get_by_role("button", name="Preview").click()
    # then the preview shows the matched and skipped boxes without leaving the page
    page.locator("#preview-matched").wait_for()
    assert page.locator("#preview-matched").inner_text() == "4"
    assert page.locator("#preview-eligible").inner_text() == "4"
    assert Rollout.objects.count() == 0
    # when they create it (started at once), the progress page shows it running
    page.get_by_role("button", name="Create rollout").click()
    page.wait_for_url(re.compile(r".*/console/rollouts/[0-9a-f-]{36}/$"))
    page.locator("[data-state='running']").wait_for()
    # and pausing it shows it paused
    page.get_by_role("button", name="Pause").click()
    page.locator("[data-state='paused']").wait_for()
    assert Rollout.objects.get().state == "paused"
    screenshot(page, "test_browser_staff_starts_a_rollout_and_pauses_it")
