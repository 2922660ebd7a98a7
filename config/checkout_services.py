"""Where this checkout's own PostgreSQL and Redis are when DATABASE_URL / REDIS_URL are unset.

``scripts/devservices.py`` chooses ports per checkout (two checkouts on one machine never share a
service) and records the URLs in ``var/services.env``; the settings and the benchmarks read them
from there, so ``python manage.py ...`` talks to this checkout's services and no other's.
"""

from __future__ import annotations

from pathlib import Path

from django.core.exceptions import ImproperlyConfigured

SERVICES_ENV_NAME = "services.env"


def services_env_read(path: Path) -> dict[str, str]:
    """The ``KEY=value`` lines of a services.env file (comments and blank lines skipped; {} if absent)."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}
    values: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, value = line.split("=", 1)
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[key.strip()] = value
    return values


def checkout_service_url(key: str, var_dir: Path) -> str:
    """The URL ``var/services.env`` records for ``key`` (DATABASE_URL or REDIS_URL); a clear error
    naming both ways to give one when it records none."""
    path = var_dir / SERVICES_ENV_NAME
    url = services_env_read(path).get(key, "")
    if not url:
        raise ImproperlyConfigured(
            f"{key} is not set and {path} does not name this checkout's service: start the embedded "
            "PostgreSQL and Redis with `make services` (or `make run` / `make test`, which write "
            f"that file), or set {key}"
        )
    return url
