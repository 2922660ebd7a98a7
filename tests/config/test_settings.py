"""Production settings load from the documented environment, and refuse to start without secrets."""

from __future__ import annotations

import base64
import os
import secrets
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PRINT_KEYS = (
    "import django; django.setup(); from django.conf import settings; print(len(settings.OTB_SECRETS_KEYS))"
)


def fernet_key() -> str:
    return base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()


def production(**env: str) -> subprocess.CompletedProcess[str]:
    base = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "OTB_ENV": "production",
        "SECRET_KEY": secrets.token_urlsafe(50),
        "ALLOWED_HOSTS": "fleet.example.net",
        "DATABASE_URL": os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test"),
        "REDIS_URL": os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"),
    }
    return subprocess.run(
        [sys.executable, "-c", PRINT_KEYS],
        cwd=ROOT,
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_production_starts_with_the_rotation_form_alone() -> None:
    # given two keys in OTB_SECRETS_KEYS (new first) and no OTB_SECRETS_KEY
    result = production(OTB_SECRETS_KEYS=f"{fernet_key()},{fernet_key()}")
    # then the settings load, with both keys
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "2"


def test_production_starts_with_one_key() -> None:
    result = production(OTB_SECRETS_KEY=fernet_key())
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "1"


def test_production_refuses_to_start_without_a_key() -> None:
    result = production()
    assert result.returncode != 0
    assert "OTB_SECRETS_KEYS (or OTB_SECRETS_KEY) must be set in production" in result.stderr
