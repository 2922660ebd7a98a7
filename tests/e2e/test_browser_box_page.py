"""The box page of a simulated box in Chromium at 1280x800, as a new user sees it: the WAN table
fits, dates read one way in the viewer's time zone, the live charts arrive full, command results
read for people. Its screenshot is kept: artifacts/screenshots/box_page_1280x800.png."""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from fleet.telemetry.models import BoxStatus
from tests.conftest import PASSWORD
from tests.e2e.browser import SCREENSHOTS, LiveServer, agent_start, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

VIEWER_ZONE = "America/New_York"  # not the server's (UTC): a time shown in UTC would be caught
ONE_FORMAT = re.compile(r"\d{1,2} [A-Z][a-z]{2} \d{4}, \d{2}:\d{2}:\d{2}")


def sign_in(page: Any) -> None:
    page.goto("/accounts/login/")
    page.get_by_label("Email or username").fill("admin@example.com")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url("**/boxes/**")


def send(page: Any, kind: str, **choices: str) -> None:
    page.select_option("#id_command_kind", kind)
    for field, value in choices.items():
        page.select_option(f"#id_command_{field}", value)
    page.get_by_role("button", name="Send").click()


def test_the_box_page_at_1280_fits_reads_one_way_and_starts_full(
    transactional_db: Any,
    browser: Any,
    asgi_server: LiveServer,
    people: Any,
    claimed_box_factory: Any,
    agent_token_factory: Any,
    tmp_path: Path,
    settings: Any,
) -> None:
    # given a simulated box (fibre, VDSL, 4G) that has been reporting for a few seconds (its
    # configuration hashed with the server's telemetry interval, so that it shows as applied)
    settings.OTB = {**settings.OTB, "TELEMETRY_INTERVAL_S": 1}
    box = claimed_box_factory(people.org, "PAGE-0001")
    token = agent_token_factory(box)
    agent = agent_start(
        asgi_server, serial=box.serial, token=token, workdir=tmp_path, wans="wan:fiber wan2:vdsl wan3:lte"
    )
    context = browser.new_context(
        base_url=asgi_server.url, viewport={"width": 1280, "height": 800}, timezone_id=VIEWER_ZONE
    )
    context.set_default_timeout(20000)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    try:
        wait_until(
            lambda: BoxStatus.objects.filter(box=box, last_seq__gte=25).exists(),
            timeout=60,
            message="the box sent no telemetry",
        )
        sign_in(page)
        # when the admin opens the box page
        page.goto(f"/boxes/{box.pk}/")
        page.wait_for_selector("#wan-table tr[data-iface='wan3']")
        page.locator("#config-state [data-state='applied']").wait_for()
        # then the live charts are back-filled from the history at once (10 s buckets over the last
        # hour: the box's first 25 s), before live updates stream
        points = page.locator("#live-points")
        wait_until(
            lambda: int(points.get_attribute("data-backfill") or 0) >= 2,
            message=f"no back-fill: {points.inner_text()}",
        )
        assert page.locator("#chart-throughput canvas").count() == 1
        # and the WAN table fits: no horizontal scroll, no cell wrapping (one line: under 50 px, two: over
        # 60), each link named once
        wrap = page.locator("#overview .table-wrap").bounding_box()
        table = page.locator("#wan-table").bounding_box()
        assert wrap is not None and table is not None and table["width"] <= wrap["width"] + 1
        single_line = page.locator("#wan-table td[data-metric='rtt_ms']").first.bounding_box()
        assert single_line is not None and single_line["height"] < 50
        for cell in page.locator("#wan-table td.mono").all():
            box_of = cell.bounding_box()
            assert (
                box_of is not None
                and box_of["height"] < 50
                and box_of["x"] + box_of["width"] <= wrap["x"] + wrap["width"]
            )
        for fact in page.locator("#overview dl.strip dd").all():  # the facts above it: one line each
            fact_box = fact.bounding_box()
            assert fact_box is not None and fact_box["height"] < 30, fact.inner_text()
        captions = [text.strip() for text in page.locator("#wan-table tbody th").all_inner_texts()]
        assert captions == ["Fibre wan", "VDSL wan2", "4G wan3"]
        # and every date is in one format, in the viewer's time zone
        times = page.locator("time[datetime]")
        assert times.count() >= 3
        for index in range(times.count()):
            element = times.nth(index)
            moment = datetime.fromisoformat(element.get_attribute("datetime")).astimezone(
                ZoneInfo(VIEWER_ZONE)
            )
            assert element.inner_text() == f"{moment.day} {moment:%b %Y, %H:%M:%S}"
            assert ONE_FORMAT.fullmatch(element.inner_text())
        # when the admin runs the diagnostics and speed tests through the tunnel and through the VDSL
        send(page, "diagnostics")
        page.locator("li[data-command='diagnostics'] .result-headline").wait_for(timeout=60000)
        send(page, "speed_test", direction="both", iface="")
        page.locator("#speed-latest tr[data-target='']").wait_for(timeout=60000)
        send(page, "speed_test", direction="both", iface="wan2")
        page.locator("#speed-latest tr[data-target='wan2']").wait_for(timeout=60000)
        # then they read for people: checks passed, "↓ N Mbit/s ↑ N Mbit/s", a history chart
        assert (
            page.locator("li[data-command='diagnostics'] .result-headline").inner_text()
            == "All 7 checks passed"
        )
        headline = page.locator("li[data-command='speed_test'] .result-headline").first.inner_text()
        assert re.fullmatch(r"↓ [\d.]+ [kMG]bit/s ↑ [\d.]+ [kMG]bit/s · VDSL \(wan2\)", headline), headline
        page.locator("#chart-speed canvas").wait_for()
        assert "{'" not in page.locator("#commands").inner_text()
        page.locator("#overview").scroll_into_view_if_needed()
        page.wait_for_timeout(500)
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / "box_page_1280x800.png"))
        page.screenshot(path=str(SCREENSHOTS / "box_page_1280_full.png"), full_page=True)
        assert [error for error in errors if "Content Security Policy" in error] == []
    finally:
        context.close()
        agent.stop()
