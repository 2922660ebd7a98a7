"""Fixtures shared by the fleet apps' tests."""

from __future__ import annotations

from typing import Any

import pytest


@pytest.fixture
def box(people: Any, box_factory: Any) -> Any:
    """A box bound to the ``people`` organisation (not provisioned)."""
    return box_factory(organization=people.org)
