"""Production settings load from the documented environment, and refuse to start without secrets or
the public address; outside production, without DATABASE_URL / REDIS_URL, the settings use this
checkout's own services."""

from __future__ import annotations

import base64
import importlib.util
import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured

from config.settings import public_url_parse

ROOT = Path(__file__).resolve().parents[2]
PRINT_KEYS = (
    "import django; django.setup(); from django.conf import settings; print(len(settings.OTB_SECRETS_KEYS))"
)


def fernet_key() -> str:
    return base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()


def production(*, command: str = PRINT_KEYS, **env: str) -> subprocess.CompletedProcess[str]:
    base = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "OTB_ENV": "production",
        "SECRET_KEY": secrets.token_urlsafe(50),
        "ALLOWED_HOSTS": "fleet.example.net",
        "OTB_PUBLIC_URL": "https://fleet.example.net",
        "DATABASE_URL": os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test"),
        "REDIS_URL": os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"),
    }
    return subprocess.run(
        [sys.executable, "-c", command],
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


# --------------------------------------------------------------------------------------------
# This checkout's own services (var/services.env), #15 item 3
# --------------------------------------------------------------------------------------------

PRINT_SERVICES = (
    "import django; django.setup(); from django.conf import settings; d = settings.DATABASES['default'];"
    " print(d['HOST'], d['PORT'], d['NAME'], settings.REDIS_URL, settings.OTB['LOCAL_URL'],"
    " settings.OTB_PUBLIC_URL)"
)


def development(var_dir: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Python run in a development environment without DATABASE_URL / REDIS_URL, on var_dir."""
    base = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "OTB_ENV": "development",
        "OTB_VAR_DIR": str(var_dir),
    }
    return subprocess.run(
        [sys.executable, *(args or ("-c", PRINT_SERVICES))],
        cwd=ROOT,
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def services_env_written(var_dir: Path, postgres: int, redis: int) -> None:
    """var/services.env as scripts/devservices.py writes it."""
    spec = importlib.util.spec_from_file_location(
        "devservices_for_settings", ROOT / "scripts" / "devservices.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
        module.write_services_env(module.Paths(ROOT, var_dir), {"postgres": postgres, "redis": redis})
    finally:
        sys.modules.pop(spec.name, None)


def test_settings_use_the_checkouts_services_recorded_by_devservices(tmp_path: Path) -> None:
    # given a checkout whose services run on ports of its own
    services_env_written(tmp_path, postgres=21234, redis=26234)
    # when the settings load without DATABASE_URL / REDIS_URL
    result = development(tmp_path)
    # then they name this checkout's services
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split()[:4] == ["127.0.0.1", "21234", "otb", "redis://127.0.0.1:26234/0"]


def test_the_environment_wins_over_services_env(tmp_path: Path) -> None:
    services_env_written(tmp_path, postgres=21234, redis=26234)
    result = development(
        tmp_path, DATABASE_URL="postgresql://u@db.example.net:5433/fleet", REDIS_URL="redis://cache:6380/2"
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split()[:4] == ["db.example.net", "5433", "fleet", "redis://cache:6380/2"]


def test_without_either_the_settings_say_how_to_get_services(tmp_path: Path) -> None:
    # given a checkout that never recorded services, and no DATABASE_URL
    result = development(tmp_path)
    # then loading refuses with what to do, instead of talking to whatever holds a default port
    assert result.returncode != 0
    assert "DATABASE_URL is not set" in result.stderr
    assert "make services" in result.stderr


def test_production_needs_the_urls_and_ignores_services_env(tmp_path: Path) -> None:
    services_env_written(tmp_path, postgres=21234, redis=26234)
    result = production(OTB_SECRETS_KEY=fernet_key(), OTB_VAR_DIR=str(tmp_path), DATABASE_URL="")
    assert result.returncode != 0
    assert "DATABASE_URL must be set in production" in result.stderr


def test_manage_py_talks_to_the_database_services_env_names(tmp_path: Path) -> None:
    # given var/services.env naming the suite's database (as devservices names the checkout's own)
    url = os.environ["DATABASE_URL"]
    (tmp_path / "services.env").write_text(f"DATABASE_URL={url}\nREDIS_URL={os.environ['REDIS_URL']}\n")
    # when manage.py runs without DATABASE_URL
    code = "from django.db import connection; print(connection.cursor().connection.info.dbname)"
    result = development(tmp_path, "manage.py", "shell", "-c", code)
    # then it connects to that database
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == url.rsplit("/", 1)[1]


def test_local_url_follows_otb_port(tmp_path: Path) -> None:
    # seed_demo prints settings.OTB["LOCAL_URL"]; make run passes the port it chose as OTB_PORT
    services_env_written(tmp_path, postgres=21234, redis=26234)
    assert development(tmp_path).stdout.split()[4] == "http://127.0.0.1:8000/"
    assert development(tmp_path, OTB_PORT="30123").stdout.split()[4] == "http://127.0.0.1:30123/"
    # and so do the links the service sends (OTB_PUBLIC_URL unset outside production)
    assert development(tmp_path, OTB_PORT="30123").stdout.split()[5] == "http://127.0.0.1:30123"


def test_production_refuses_to_start_without_the_public_url() -> None:
    # given a production environment complete but for OTB_PUBLIC_URL
    result = production(OTB_SECRETS_KEY=fernet_key(), OTB_PUBLIC_URL="")
    # then the settings refuse to load, saying what to set and why
    assert result.returncode != 0
    assert "OTB_PUBLIC_URL must be set in production" in result.stderr
    assert "https://fleet.example.net" in result.stderr


def test_production_refuses_a_public_url_that_is_not_an_origin() -> None:
    result = production(OTB_SECRETS_KEY=fernet_key(), OTB_PUBLIC_URL="fleet.example.net/portal")
    assert result.returncode != 0
    assert "OTB_PUBLIC_URL must be an http(s) origin" in result.stderr
    assert "'fleet.example.net/portal'" in result.stderr


def test_production_reads_the_public_url() -> None:
    command = (
        "import django; django.setup(); from django.conf import settings; print(settings.OTB_PUBLIC_URL)"
    )
    result = production(
        command=command, OTB_SECRETS_KEY=fernet_key(), OTB_PUBLIC_URL="https://fleet.example.net/"
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "https://fleet.example.net"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (None, "http://127.0.0.1:8000"),  # outside production: the dev server
        ("https://fleet.example.net", "https://fleet.example.net"),
        ("https://fleet.example.net/", "https://fleet.example.net"),
        ("HTTPS://Fleet.Example.NET:8443", "https://fleet.example.net:8443"),
        ("http://[2001:db8::1]:8000", "http://[2001:db8::1]:8000"),
    ],
)
def test_the_public_url_is_kept_as_an_origin(raw: str | None, expected: str) -> None:
    assert public_url_parse(raw) == expected


@pytest.mark.parametrize(
    "raw",
    [
        "fleet.example.net",
        "ftp://fleet.example.net",
        "https://fleet.example.net/fleet",
        "https://fleet.example.net/?a=1",
        "https://fleet.example.net/#top",
        "https://user:pw@fleet.example.net",
        "https://fleet.example.net:99999",
        "https://",
    ],
)
def test_a_public_url_that_is_not_an_origin_is_refused(raw: str) -> None:
    with pytest.raises(ImproperlyConfigured, match="OTB_PUBLIC_URL"):
        public_url_parse(raw)
