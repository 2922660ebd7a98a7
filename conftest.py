"""Root pytest configuration: tests run against real PostgreSQL and Redis (never skipped in CI)."""

from __future__ import annotations

import os

os.environ.setdefault("OTB_ENV", "test")
