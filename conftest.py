"""Root pytest configuration.

Tests run against real PostgreSQL and Redis. In CI (``OTB_REQUIRE_SERVICES=1``) a skipped test is
turned into a failure: a test that cannot reach what it needs must say so loudly, not vanish.
"""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("OTB_ENV", "test")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> object:
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if os.environ.get("OTB_REQUIRE_SERVICES") == "1" and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped in CI, which counts as a failure: {reason}"
