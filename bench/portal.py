"""Benchmark: server time and query count of the portal's fleet page with 10,000 boxes.

Creates a fresh database (``otb_bench_portal`` next to ``DATABASE_URL``), one organisation with
10,000 claimed boxes spread over servers in two regions, a live status row per box and a public IPv4
for each; then renders ``/boxes/`` (first page, a search and a page deep in the list) in-process with
Django's test client N times and reports the median server time and the number of SQL queries of one
render. Prints one JSON line:
``{"bench": "portal", "boxes": 10000, "fleet_page_ms": ..., "queries": ...}`` (target: at most 200 ms).
The size is the same in quick and ``--full`` mode (only the number of renders changes).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

from common import base_database_url

if TYPE_CHECKING:  # Django is set up at run time, in seed()
    from django.contrib.auth.models import User

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
BENCH_DB = "otb_bench_portal"
BOXES = 10_000
TARGET_MS = 200


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def recreate_database(base_url: str) -> str:
    import psycopg

    parts = urlsplit(base_url)
    maintenance = urlunsplit(parts._replace(path="/postgres"))
    with psycopg.connect(maintenance, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{BENCH_DB}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{BENCH_DB}"')
    return urlunsplit(parts._replace(path=f"/{BENCH_DB}"))


def seed(count: int) -> User:
    """Migrate, then bulk-create the organisation, its boxes, statuses and public addresses."""
    import django

    django.setup()
    from django.contrib.auth import get_user_model
    from django.core.management import call_command
    from django.db import connection
    from django.utils import timezone

    from fleet.core.choices import BoxState, Role
    from fleet.core.models import Box, Membership, Organization, Region
    from fleet.telemetry.models import BoxStatus
    from provisioning.models import AddressAssignment, AddressPool, AggregationServer

    call_command("migrate", verbosity=0)
    user = get_user_model().objects.create_user(
        "bench@example.com", "bench@example.com", "bench-password-123"
    )
    org = Organization.objects.create(name="Bench", slug="bench")
    Membership.objects.create(user=user, organization=org, role=Role.OWNER)
    servers = []
    for index, code in enumerate(("eu-west", "eu-central")):
        region = Region.objects.create(code=code, name=code.replace("-", " ").title())
        for number in range(2):
            servers.append(
                AggregationServer.objects.create(
                    name=f"agg-{code}-{number}",
                    region=region,
                    hostname=f"agg{index}{number}.example.net",
                    public_ipv4=f"192.0.2.{10 * index + number + 1}",
                    tunnel_port_min=20000,
                    tunnel_port_max=29999,
                    capacity=10000,
                    assigned_boxes=count // 4,
                )
            )
    pool = AddressPool.objects.create(
        name="bench-public",
        region=servers[0].region,
        cidr="100.64.0.0/16",
        purpose="public_ipv4",
        prefix_length=32,
    )
    now = timezone.now()
    boxes = [
        Box(
            serial=f"BENCH-{i:06d}",
            name=f"Site {i}" if i % 3 == 0 else "",
            mac=f"02:00:00:{i >> 16 & 255:02x}:{i >> 8 & 255:02x}:{i & 255:02x}",
            state=BoxState.CLAIMED,
            organization=org,
            server=servers[i % 4],
            tunnel_port=20000 + i // 4,
            firmware_version="23.05.3-otb.1" if i % 10 else "23.05.2-otb.4",
            config_hash="a" * 64,
            applied_config_hash="a" * 64 if i % 50 else "b" * 64,
        )
        for i in range(count)
    ]
    Box.objects.bulk_create(boxes, batch_size=2000)
    BoxStatus.objects.bulk_create(
        [
            BoxStatus(box=box, online=i % 17 != 0, last_seen_at=now, wans_up=2 if i % 13 else 1, wans_total=2)
            for i, box in enumerate(boxes)
        ],
        batch_size=2000,
    )
    AddressAssignment.objects.bulk_create(
        [
            AddressAssignment(
                pool=pool,
                box=box,
                purpose="public_ipv4",
                index=i + 1,
                prefix=f"100.64.{(i + 1) >> 8 & 255}.{(i + 1) & 255}/32",
            )
            for i, box in enumerate(boxes)
        ],
        batch_size=2000,
    )
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")
    return user


def measure(user: User, renders: int) -> dict[str, object]:
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext

    client = Client()
    client.force_login(user)
    urls = ["/boxes/", "/boxes/?q=BENCH-0099", "/boxes/?page=150", "/boxes/?status=offline"]
    for url in urls:  # warm up: connections, templates, caches
        assert client.get(url).status_code == 200, url
    timings: dict[str, list[float]] = {url: [] for url in urls}
    for _ in range(renders):
        for url in urls:
            started = time.perf_counter()
            response = client.get(url)
            timings[url].append((time.perf_counter() - started) * 1000)
            assert response.status_code == 200
    with CaptureQueriesContext(connection) as captured:
        response = client.get("/boxes/")
    rows = response.content.decode().count('<tr data-box="')
    assert rows == 50, rows
    return {
        "fleet_page_ms": round(statistics.median(timings["/boxes/"]), 1),
        "search_ms": round(statistics.median(timings[urls[1]]), 1),
        "deep_page_ms": round(statistics.median(timings[urls[2]]), 1),
        "filter_offline_ms": round(statistics.median(timings[urls[3]]), 1),
        "queries": len(captured),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--full", action="store_true", help="more renders (the fleet size is always 10,000)")
    args = parser.parse_args()
    base = base_database_url()
    os.environ["DATABASE_URL"] = recreate_database(base)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    os.environ["OTB_TEST_DB_NAME"] = ""
    os.environ.setdefault("OTB_ENV", "test")
    os.environ["DEBUG"] = "false"
    started = time.monotonic()
    user = seed(BOXES)
    log(f"seeded {BOXES} boxes in {time.monotonic() - started:.1f} s")
    result = measure(user, renders=50 if args.full else 15)
    line = {"bench": "portal", "boxes": BOXES, **result, "target_ms": TARGET_MS}
    print(json.dumps(line), flush=True)
    from django.db import connections

    connections.close_all()
    return 0


if __name__ == "__main__":
    sys.exit(main())
