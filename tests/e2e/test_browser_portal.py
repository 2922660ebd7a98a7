"""The customer portal in a real browser (Chromium via Playwright) against uvicorn, with the on-box
agent's simulator sending telemetry over its websocket."""

from __future__ import annotations

import re
from typing import Any

import pytest

from fleet.telemetry.models import WanStatus
from tests.conftest import CLAIM_CODE, PASSWORD
from tests.e2e.browser import agent_start, screenshot, sign_in, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]


def live_points(page: Any) -> int:
    """How many live telemetry updates the page has drawn (read without running script in the page:
    the content security policy forbids eval, and Playwright's predicates use it)."""
    page.wait_for_timeout(250)
    return int(page.locator("#live-points").get_attribute("data-count") or 0)


def test_browser_sign_in_and_out(transactional_db, page, people, box_factory) -> None:
    # given an organisation with a box
    box_factory("ACME-0001", organization=people.org, name="Paris office")
    # when the owner signs in
    sign_in(page, "owner@example.com", PASSWORD)
    # then the fleet page lists the box, and the page ran without script or CSP errors
    row = page.locator("tr[data-box]").first
    assert "Paris office" in row.inner_text()
    assert page.get_by_role("heading", name="Fleet").is_visible()
    screenshot(page, "test_browser_sign_in_and_out")
    assert page.errors == [], page.errors
    # and signing out returns to the sign-in page
    page.get_by_role("button", name="Log out").click()
    page.wait_for_url("**/accounts/login/**")


def test_browser_claim_a_box(transactional_db, page, people, box_factory, provisioned_region) -> None:
    box_factory("NEW-4242")
    sign_in(page, "admin@example.com", PASSWORD)
    page.get_by_role("link", name="Claim a box").first.click()
    # when the claim code is wrong, the error is shown on the field
    page.get_by_label("Serial number").fill("NEW-4242")
    page.get_by_label("Claim code").fill("not-the-code")
    page.get_by_role("button", name="Claim the box").click()
    error = page.locator("#id_claim_code-errors")
    assert "The serial number or the claim code is wrong" in error.inner_text()
    # when it is right, the box is claimed and its page opens
    page.get_by_label("Claim code").fill(CLAIM_CODE)
    page.get_by_role("button", name="Claim the box").click()
    page.wait_for_url(re.compile(r".*/boxes/[0-9a-f-]{36}/$"))
    assert "NEW-4242" in page.locator("h1").inner_text()
    assert "is now part of Acme" in page.locator(".messages").inner_text()
    screenshot(page, "test_browser_claim_a_box")


def test_browser_live_chart_updates_with_agent_telemetry(
    transactional_db, page, asgi_server, people, claimed_box_factory, agent_token_factory, tmp_path
) -> None:
    # given a claimed box whose agent is online and sending telemetry every second
    box = claimed_box_factory(people.org, "LIVE-0001")
    agent = agent_start(asgi_server, serial=box.serial, token=agent_token_factory(box), workdir=tmp_path)
    try:
        sign_in(page, "viewer@example.com", PASSWORD)
        # when a viewer opens the box page
        page.goto(f"/boxes/{box.pk}/")
        page.wait_for_selector("#live-dot.on")
        # then live points arrive over the websocket and the charts grow, without reloading the page
        first = wait_until(
            lambda: live_points(page) >= 2, timeout=30, message="no live telemetry"
        ) and live_points(page)
        wait_until(lambda: live_points(page) >= first + 2, timeout=30, message="the chart stopped updating")
        assert page.locator("#chart-throughput canvas").count() == 1
        assert page.locator("#chart-rtt .u-legend .u-series").count() >= 2  # time + at least one link
        assert re.search(r"bit/s", page.locator("#agg-rx").inner_text())
        assert page.evaluate("performance.getEntriesByType('navigation').length") == 1  # no reload
        screenshot(page, "test_browser_live_chart_updates_with_agent_telemetry")
        assert [e for e in page.errors if "Content Security Policy" in e] == []
    finally:
        agent.stop()


def test_browser_wan_policy_waits_until_the_agent_applies_it(
    transactional_db, page, asgi_server, people, claimed_box_factory, agent_token_factory, tmp_path
) -> None:
    # given a box whose agent reported its links once and went away
    box = claimed_box_factory(people.org, "POLICY-0001")
    token = agent_token_factory(box)
    agent = agent_start(asgi_server, serial=box.serial, token=token, workdir=tmp_path)
    try:
        wait_until(lambda: WanStatus.objects.filter(box=box).exists(), timeout=30, message="no WAN reported")
    finally:
        agent.stop()
    sign_in(page, "admin@example.com", PASSWORD)
    page.goto(f"/boxes/{box.pk}/#policy")
    # when the admin switches to failover and saves
    page.get_by_label("Mode").select_option("failover")
    role_selects = page.locator("#policy-form select[name^='role_']")
    assert role_selects.count() >= 1
    role_selects.first.select_option("primary")
    page.get_by_role("button", name="Save policy").click()
    # then the page says it waits for the box (the box is offline: it keeps waiting)
    waiting = page.locator("#config-state [data-state='waiting']")
    waiting.wait_for()
    assert "Waiting for the box to apply" in waiting.inner_text()
    # when the agent comes back and applies the new configuration, the waiting state clears by itself
    agent = agent_start(asgi_server, serial=box.serial, token=token, workdir=tmp_path)
    try:
        page.locator("#config-state [data-state='applied']").wait_for(timeout=45000)
        box.refresh_from_db()
        assert box.applied_config_hash == box.config_hash
        assert box.wan_policy["mode"] == "failover"
        screenshot(page, "test_browser_wan_policy_waits_until_the_agent_applies_it")
    finally:
        agent.stop()


def test_browser_another_organisations_box_is_not_found(transactional_db, page, people, box_factory) -> None:
    box = box_factory("ACME-SECRET", organization=people.org)
    sign_in(page, "outsider@example.com", PASSWORD)
    response = page.goto(f"/boxes/{box.pk}/")
    assert response.status == 404
    assert "ACME-SECRET" not in page.content()
    assert page.get_by_role("heading", name="Not found").is_visible()
    screenshot(page, "test_browser_another_organisations_box_is_not_found")
