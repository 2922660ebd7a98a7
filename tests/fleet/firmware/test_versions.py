"""Firmware versions (fleet.firmware.versions): numeric order with pre-releases first, ranges."""

from __future__ import annotations

from fleet.firmware.versions import version_in_range, version_key


def test_versions_order_numerically_with_prereleases_first() -> None:
    ordered = ["1.2.0", "1.9.9", "1.10.0", "2.0.0-rc1", "2.0.0-rc2", "2.0.0", "24.10.1-otb2", "24.10.1-otb10"]
    assert sorted(ordered, key=version_key) == ordered
    assert version_in_range("1.5", "1.0", "2.0") and not version_in_range("2.0", "1.0", "2.0")
    assert not version_in_range("", None, None)
