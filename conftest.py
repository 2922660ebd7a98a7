"""Root pytest configuration.

Tests run against real PostgreSQL and Redis. In CI (``OTB_REQUIRE_SERVICES=1``) a skipped test is
turned into a failure: a test that cannot reach what it needs must say so loudly, not vanish.
"""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("OTB_ENV", "test")

# What the suite drives for real besides the lab's packages: jq (the stock box reads its answers with
# it) and curl (the stock box's HTTP client). chromium and nginx come from .ci/run or browser.py.
SUITE_PACKAGES = {"jq": "jq", "curl": "curl"}


def pytest_sessionstart(session: pytest.Session) -> None:
    """On a fresh machine, as root, install the Debian packages the data-plane, gateway and stock-box
    tests run (the lab's set: wireguard-go, shadowsocks-libev, nftables, ...): a no-op when present."""
    if os.geteuid() != 0 or os.environ.get("OTB_SKIP_PACKAGE_INSTALL") == "1":
        return
    from netlab.scenario import PACKAGES, LabError, ensure_packages

    try:
        ensure_packages({**PACKAGES, **SUITE_PACKAGES})
    except (LabError, OSError) as error:  # the tests that need them say so themselves
        print(f"conftest: could not install the suite's Debian packages: {error}", flush=True)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> object:
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if os.environ.get("OTB_REQUIRE_SERVICES") == "1" and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped in CI, which counts as a failure: {reason}"
