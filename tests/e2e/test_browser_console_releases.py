"""The console in a real browser (1280x800): the releases page (upload, errors next to the fields, sign
with the service's key, publish, withdraw), the rollout form's pace fields and a rollout in progress
saying why it waits, and fleet health with public IPv4 pool usage and stale gateways. Screenshots:
artifacts/screenshots/test_browser_console_*.png."""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from collections.abc import Iterator
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from django.utils import timezone

from fleet.firmware.engine import rollouts_tick
from fleet.firmware.models import Release, Rollout
from provisioning.models import GatewayHealth
from tests.conftest import PASSWORD
from tests.e2e.browser import LiveServer, asgi_server_start, asgi_server_stop, page_open, screenshot
from tests.fleet.firmware.firmware_helpers import (
    PUBLIC_KEY_B64,
    SIGNING_KEY,
    Responder,
    make_fleet,
    make_release,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]
VIEWPORT = {"width": 1280, "height": 800}
LIMIT = 2 * 1024 * 1024


@pytest.fixture(scope="module")
def signing_server(
    django_db_setup: Any, django_db_blocker: Any, tmp_path_factory: Any
) -> Iterator[LiveServer]:
    """A server of its own with a service signing key, a media folder and a 2 MiB image limit."""
    workdir = tmp_path_factory.mktemp("signing-server")
    key_file = workdir / "service.key"
    key_file.write_bytes(
        SIGNING_KEY.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    server = asgi_server_start(
        workdir / "uvicorn.log",
        {
            "OTB_FIRMWARE_SIGNING_KEY_FILE": str(key_file),
            "OTB_FIRMWARE_SIGNING_PUBLIC_KEY": PUBLIC_KEY_B64,
            "OTB_MEDIA_ROOT": str(workdir / "media"),
            "OTB_FIRMWARE_MAX_IMAGE_BYTES": str(LIMIT),
        },
    )
    yield server
    asgi_server_stop(server)


def staff_signs_in(page: Any) -> None:
    page.goto("/accounts/login/")
    page.get_by_label("Email or username").fill("staff@example.com")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url("**/console/**")


def script_errors(page: Any) -> list[str]:
    """The page's errors, less the 400 answers to the forms refused on purpose."""
    return [error for error in page.errors if "status of 400" not in error]


def error_of(page: Any, field: str) -> str:
    """The error shown next to a field (it must be visible)."""
    errors = page.locator(f"#id_{field}-errors")
    errors.wait_for(state="visible")
    return errors.inner_text()


def test_browser_console_releases_upload_sign_publish_withdraw(
    transactional_db: Any, browser: Any, signing_server: LiveServer, people: Any
) -> None:
    page = page_open(browser, signing_server.url, VIEWPORT)
    page.on("dialog", lambda dialog: dialog.accept())
    try:
        staff_signs_in(page)
        page.get_by_role("link", name="Releases").click()
        page.wait_for_url("**/console/releases/")

        # an empty form: each missing field is said next to it
        page.get_by_role("button", name="Upload as a draft").click()
        assert error_of(page, "version") and error_of(page, "hardware_models") and error_of(page, "image")

        # an image over the limit: refused on the image field, the other fields kept
        page.get_by_label("Version").fill("24.10.1-otb3")
        page.get_by_label("Hardware models").fill("OTB-v2c, OTB-v2b")
        page.get_by_label("Image").set_input_files(
            {"name": "big.img", "mimeType": "application/octet-stream", "buffer": b"\0" * (LIMIT + 4096)}
        )
        page.get_by_role("button", name="Upload as a draft").click()
        assert "larger than the limit" in error_of(page, "image")
        assert page.get_by_label("Version").input_value() == "24.10.1-otb3"
        assert not Release.objects.exists()

        # a real image: the release page shows its size and SHA-256
        image = b"OTB sysupgrade image " * 10_000
        page.get_by_label("Image").set_input_files(
            {"name": "otb-24.10.1.img", "mimeType": "application/octet-stream", "buffer": image}
        )
        page.get_by_role("button", name="Upload as a draft").click()
        page.wait_for_url(re.compile(r".*/console/releases/[0-9a-f-]{36}/$"))
        assert page.locator("#release-sha256").inner_text() == hashlib.sha256(image).hexdigest()
        assert f"{len(image):,} bytes" in page.locator("#release-size").inner_text()

        # a signature that is no signature: said next to the field
        page.get_by_label("…or the signature as base64").fill("not base64 at all")
        page.get_by_role("button", name="Store this signature").click()
        assert error_of(page, "signature")

        # signed with the service's key, then published
        page.get_by_role("button", name="Sign with the service's key").click()
        page.locator("#release-signature").wait_for()
        page.get_by_role("button", name="Publish").click()
        page.locator("#release-state", has_text="Published").wait_for()
        release = Release.objects.get()
        assert release.state == "published" and release.signature
        screenshot(page, "test_browser_console_release_page")

        # withdrawing needs a reason, said next to the field
        page.get_by_role("button", name="Withdraw").click()
        assert error_of(page, "reason")
        assert Release.objects.get().state == "published"

        page.get_by_role("link", name="Releases").first.click()
        page.locator("tr[data-release='24.10.1-otb3']").wait_for()
        screenshot(page, "test_browser_console_releases")
        assert not script_errors(page), page.errors
    finally:
        page.context.close()


def test_browser_console_rollout_form_errors_then_a_rollout_in_progress(
    transactional_db: Any, browser: Any, asgi_server: LiveServer, people: Any
) -> None:
    release = make_release("3.0.0")
    make_fleet(12, organization=people.org, version="2.0.0")
    page = page_open(browser, asgi_server.url, VIEWPORT)
    try:
        staff_signs_in(page)
        page.goto("/console/rollouts/new/")
        page.get_by_label("Name").fill("3.0.0 for Acme")
        page.get_by_label("Release").select_option(label="3.0.0 (stable)")
        page.get_by_label("Phases (% of eligible boxes)").fill("10, 5, 200")
        page.get_by_label("Soak time between phases (minutes)").fill("-5")
        page.get_by_label("Upgrades in flight at once").fill("0")
        page.get_by_label("Pause when a phase's failures exceed (%)").fill("150")
        page.get_by_role("button", name="Preview").click()
        # then every error is next to its field, in words
        assert error_of(page, "phases")
        assert "cannot be negative" in error_of(page, "soak_minutes")
        assert "At least one upgrade" in error_of(page, "max_in_flight")
        assert "from 0 to 100" in error_of(page, "max_failure_pct")
        screenshot(page, "test_browser_console_rollout_form_errors")
        # and "force" says what it does
        assert (
            "ignore maintenance windows"
            in page.locator("label.checkbox", has=page.locator("#id_force")).inner_text()
        )

        page.get_by_label("Phases (% of eligible boxes)").fill("25, 100")
        page.get_by_label("Soak time between phases (minutes)").fill("30")
        page.get_by_label("Upgrades in flight at once").fill("2")
        page.get_by_label("Pause when a phase's failures exceed (%)").fill("50")
        page.locator("#id_force").check()
        page.get_by_role("button", name="Create rollout").click()
        page.wait_for_url(re.compile(r".*/console/rollouts/[0-9a-f-]{36}/$"))
        rollout = Rollout.objects.get()
        assert (rollout.soak_s, rollout.max_in_flight, rollout.max_failure_pct, rollout.force) == (
            1800,
            2,
            50,
            True,
        )

        # when the engine runs and the boxes answer (one in three fails) until phase 1 has settled
        responder = Responder(fail_fraction=0.34)
        for _ in range(8):
            rollouts_tick()
            responder.respond()
        rollouts_tick()
        rollout.refresh_from_db()
        assert rollout.state == "running" and rollout.phase_settled_at is not None

        # then the live page says it waits for the soak time, and until when, with a legend and boxes
        page.locator("#rollout-waiting [data-kind='soak']").wait_for()
        waiting = page.locator("#rollout-waiting").inner_text()
        assert "phase 2 (100 %) opens after the soak time of 30 min" in waiting and "Until" in waiting
        legend = page.locator("#progress-legend").inner_text()
        assert "Succeeded 17 %" in legend and "Failed 8 %" in legend and "Not sent yet" in legend
        page.locator("[data-upgrade-state='failed']").wait_for()  # the list is re-read every 5 s
        assert page.locator("#rollout-boxes-list tbody tr").count() == 12
        assert page.locator("[data-upgrade-state='failed']").count() == 1
        screenshot(page, "test_browser_console_rollout_in_progress")
        assert not script_errors(page), page.errors
    finally:
        page.context.close()
    assert release.rollouts.count() == 1


def test_browser_console_health_public_ipv4_and_stale_gateways(
    transactional_db: Any,
    browser: Any,
    asgi_server: LiveServer,
    people: Any,
    claimed_box_factory: Any,
    provisioned_region: Any,
    provisioned_region_factory: Any,
) -> None:
    for index in range(3):
        claimed_box_factory(people.org, f"ACME-{index:04d}")
    other = provisioned_region_factory(
        "eu-central", public="198.51.100.0/28", tunnel="100.65.0.0/24", ipv6="2001:db8:100::/44"
    ).server
    GatewayHealth.objects.create(
        server=provisioned_region.server,
        last_report_at=timezone.now(),
        gateway_version="0.1.0",
        uptime_s=3600,
        load1=0.42,
        cpu_pct=7.5,
        mem_pct=31.0,
        peers=3,
        converge_errors=0,
        upstream_rx_bps=180_000_000,
        upstream_tx_bps=22_000_000,
    )
    GatewayHealth.objects.create(
        server=other,
        last_report_at=timezone.now() - dt.timedelta(minutes=12),
        gateway_version="0.1.0",
        uptime_s=60,
        peers=0,
        converge_errors=2,
        last_error="nftables: rule set refused",
    )
    page = page_open(browser, asgi_server.url, VIEWPORT)
    try:
        staff_signs_in(page)
        page.goto("/console/")
        region = page.locator("tr[data-region='eu-west']").inner_text()
        assert "3 / 62" in region and "capped by public IPv4 addresses" in region
        assert page.locator(f"tr[data-server='{other.name}'] [data-stale='1']").is_visible()
        assert not page.locator(
            f"tr[data-server='{provisioned_region.server.name}'] [data-stale='1']"
        ).count()
        screenshot(page, "test_browser_console_health")
        assert not script_errors(page), page.errors
    finally:
        page.context.close()
