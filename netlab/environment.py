"""The lab's own database and Redis database, so it never mixes with the tests' or the demo's data:
database ``<name of DATABASE_URL's database>_lab`` on the same PostgreSQL, recreated and migrated for
each run; Redis database 13 of REDIS_URL's server, flushed before and after."""

from __future__ import annotations

import os
import subprocess
import sys
from urllib.parse import urlsplit, urlunsplit

import psycopg
import redis

from netlab.backend import ROOT

LAB_REDIS_DB = 13


def lab_environment(base: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(base if base is not None else os.environ)
    database_url = env.get("DATABASE_URL")
    redis_url = env.get("REDIS_URL")
    if not database_url or not redis_url:
        raise SystemExit("the lab needs DATABASE_URL and REDIS_URL (make lab sets them)")
    parts = urlsplit(database_url)
    name = f"{parts.path.lstrip('/') or 'otb'}_lab"
    maintenance = urlunsplit(parts._replace(path="/postgres"))
    with psycopg.connect(maintenance, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    redis_parts = urlsplit(redis_url)
    env["DATABASE_URL"] = urlunsplit(parts._replace(path=f"/{name}"))
    env["REDIS_URL"] = urlunsplit(redis_parts._replace(path=f"/{LAB_REDIS_DB}"))
    env["OTB_CACHE_PREFIX"] = "otb-lab"
    env["OTB_CHANNELS_PREFIX"] = "otb-lab"
    env["DJANGO_SETTINGS_MODULE"] = "config.settings"
    redis_flush(env)
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "-v0"], cwd=ROOT, env=env, check=True, timeout=300
    )
    return env


def redis_flush(env: dict[str, str]) -> None:
    client = redis.Redis.from_url(env["REDIS_URL"])
    try:
        client.flushdb()
    finally:
        client.close()


def lab_database_drop(env: dict[str, str]) -> None:
    parts = urlsplit(env["DATABASE_URL"])
    maintenance = urlunsplit(parts._replace(path="/postgres"))
    with psycopg.connect(maintenance, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{parts.path.lstrip("/")}" WITH (FORCE)')
