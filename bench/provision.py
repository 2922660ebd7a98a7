"""Benchmark: box claims per second over HTTP against the production ASGI server.

Creates a fresh database (``otb_bench_provision`` next to ``DATABASE_URL``), one organisation with a
personal API token, one aggregation server with pools large enough for every box, and N unclaimed
boxes; starts ``uvicorn config.asgi:application --workers 2``; fires ``POST /api/v1/boxes/claim``
from 16 concurrent keep-alive clients; then, as the baseline of the same run, as many ``GET
/api/v1/me`` (the cheapest authenticated API call: the framework's floor); then checks by SQL that no
prefix and no tunnel port was handed out twice. Prints one JSON line. Quick mode N=1000, ``--full`` N=10000.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import (
    base_database_url,
    bench_database_url,
    cpu_ms_per,
    cpu_snapshot,
    free_port,
    log,
    percentile,
    recreate_database,
    uvicorn_start,
    wait_healthy,
)

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
BENCH_DB = "otb_bench_provision"
CLAIM_CODE = "BENCH-CLAIM-CODE"
CLIENTS = 16


def seed(count: int) -> tuple[str, str, list[str]]:
    """Migrate and create the org, token, server, pools and boxes. Returns (org id, token, serials)."""
    import django

    django.setup()
    from datetime import timedelta

    from django.contrib.auth import get_user_model
    from django.core.management import call_command
    from django.db import connections
    from django.utils import timezone

    from fleet.core.audit import Actor
    from fleet.core.choices import Role
    from fleet.core.models import ApiToken, Box, Membership, Organization
    from fleet.core.tokens import TokenKind, box_secret_digest, token_issue
    from provisioning.services.infrastructure import pool_create, region_create, server_create

    call_command("migrate", verbosity=0)
    actor = Actor.system("bench")
    user = get_user_model().objects.create_user("bench", "bench@example.com", "bench-password-123")
    org = Organization.objects.create(name="Bench", slug="bench")
    Membership.objects.create(user=user, organization=org, role=Role.OWNER)
    issued = token_issue(TokenKind.USER)
    ApiToken.objects.create(
        user=user,
        organization=org,
        name="bench",
        token_prefix=issued.prefix,
        token_hash=issued.digest,
        expires_at=timezone.now() + timedelta(days=1),
    )
    region = region_create(actor=actor, code="bench", name="Bench")
    server_create(
        actor=actor,
        name="bench-1",
        region=region,
        hostname="bench-1.example.net",
        public_ipv4="198.51.100.1",
        tunnel_port_min=20000,
        tunnel_port_max=20000 + count + 99,
        capacity=count + 10,
        wg_public_key="bench-server-key",
    )
    pool_create(actor=actor, name="bench-public", cidr="100.80.0.0/18", purpose="public_ipv4", region=region)
    pool_create(actor=actor, name="bench-tunnel", cidr="100.96.0.0/16", purpose="tunnel_p2p", region=region)
    pool_create(actor=actor, name="bench-ipv6", cidr="2001:db8::/40", purpose="ipv6_prefix", region=region)
    serials = [f"BENCH{i:07d}" for i in range(count)]
    Box.objects.bulk_create(
        [Box(serial=serial, claim_code_hash=box_secret_digest(serial, CLAIM_CODE)) for serial in serials],
        batch_size=2000,
    )
    org_id = str(org.pk)
    connections.close_all()
    return org_id, issued.value, serials


def duplicates(database_url: str) -> dict[str, int]:
    import psycopg

    with psycopg.connect(database_url) as conn:

        def count(query: str) -> int:
            row = conn.execute(query).fetchone()
            assert row is not None  # an aggregate without GROUP BY returns one row
            return int(row[0])

        prefixes = count("SELECT count(*) - count(DISTINCT prefix) FROM provisioning_addressassignment")
        ports = count(
            "SELECT count(*) - count(DISTINCT (server_id, tunnel_port)) FROM fleet_box "
            "WHERE tunnel_port IS NOT NULL"
        )
        claimed = count("SELECT count(*) FROM fleet_box WHERE state = 'claimed'")
        assignments = count("SELECT count(*) FROM provisioning_addressassignment")
    return {"prefixes": prefixes, "ports": ports, "claimed": claimed, "assignments": assignments}


async def fire(
    base_url: str,
    token: str,
    org_id: str,
    serials: list[str],
    clients: int = CLIENTS,
    *,
    baseline: bool = False,
) -> tuple[list[float], dict[int, int]]:
    """Claim every serial (or, with ``baseline``, make as many ``GET /api/v1/me`` calls: the cheapest
    authenticated API request, i.e. the framework's floor on the same server and load)."""
    from loadclient import KeepAliveClient

    queue: asyncio.Queue[str] = asyncio.Queue()
    for serial in serials:
        queue.put_nowait(serial)
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}

    async def client_loop() -> None:
        async with KeepAliveClient(base_url, headers=headers, timeout=60) as client:
            while True:
                try:
                    serial = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                body = json.dumps({"serial": serial, "claim_code": CLAIM_CODE, "organization": org_id})
                started = time.perf_counter()
                if baseline:
                    status, answer = await client.request("GET", "/api/v1/me")
                    status = 201 if status == 200 else status
                else:
                    status, answer = await client.request("POST", "/api/v1/boxes/claim", body.encode())
                latencies.append(time.perf_counter() - started)
                statuses[status] = statuses.get(status, 0) + 1
                if status != 201 and statuses[status] <= 3:
                    log(f"{'me' if baseline else 'claim'} {serial}: {status} {answer[:300]!r}")

    await asyncio.gather(*(client_loop() for _ in range(clients)))
    return latencies, statuses


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--full", action="store_true", help="10000 claims instead of 1000")
    parser.add_argument("--claims", type=int, default=None)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--clients", type=int, default=CLIENTS)
    args = parser.parse_args()
    count = args.claims or (10_000 if args.full else 1_000)

    base = base_database_url()
    database_url, maintenance_url = bench_database_url(base, BENCH_DB)
    recreate_database(maintenance_url, BENCH_DB)

    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "OTB_ENV": "development",
        "DEBUG": "0",
        "LOG_LEVEL": "WARNING",
        "OTB_CACHE_PREFIX": "otb-bench-provision",
        "OTB_CHANNELS_PREFIX": "otb-bench-provision",
        "OTB_CLAIM_MAX_FAILURES": "1000000",
        # A pool per uvicorn worker: ASGI runs each request in its own thread, so per-thread
        # persistent connections would pile up past max_connections.
        "DATABASE_CONN_MAX_AGE": "0",
        "DATABASE_POOL_MAX_SIZE": os.environ.get("BENCH_DB_POOL_SIZE", "16"),
    }
    os.environ.update(env)
    seed_started = time.monotonic()
    org_id, token, serials = seed(count)
    log(f"seeded {count} boxes in {time.monotonic() - seed_started:.1f} s")

    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    server = uvicorn_start(
        port, args.workers, env, app=os.environ.get("BENCH_ASGI_APP", "config.asgi:application")
    )
    try:
        wait_healthy(base_url, server)
        cpu_before = cpu_snapshot(server.pid)
        started = time.perf_counter()
        latencies, statuses = asyncio.run(fire(base_url, token, org_id, serials, args.clients))
        elapsed = time.perf_counter() - started
        cpu = cpu_ms_per(cpu_before, cpu_snapshot(server.pid), len(serials))
        # The baseline in the same run: as many of the cheapest authenticated API calls.
        cpu_before = cpu_snapshot(server.pid)
        started = time.perf_counter()
        _, base_statuses = asyncio.run(fire(base_url, token, org_id, serials, args.clients, baseline=True))
        base_elapsed = time.perf_counter() - started
        base_cpu = cpu_ms_per(cpu_before, cpu_snapshot(server.pid), len(serials))
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()

    counts = duplicates(database_url)
    ok = statuses.get(201, 0)
    result = {
        "bench": "provision",
        "claims_per_s": round(ok / elapsed, 1),
        "p50_ms": round(statistics.median(latencies) * 1000, 2),
        "p99_ms": round(percentile(latencies, 0.99) * 1000, 2),
        "duplicates": counts["prefixes"] + counts["ports"],
        "claims": ok,
        "errors": sum(n for code, n in statuses.items() if code != 201),
        "clients": args.clients,
        "workers": args.workers,
        "claimed_rows": counts["claimed"],
        "assignments": counts["assignments"],
        "cpu_ms_per_claim": cpu,
        "baseline_me_per_s": round(base_statuses.get(201, 0) / base_elapsed, 1),
        "baseline_cpu_ms_per_request": base_cpu,
        "claims_vs_baseline": round(ok / elapsed / max(base_statuses.get(201, 0) / base_elapsed, 1e-9), 3),
    }
    print(json.dumps(result), flush=True)
    return 0 if ok == count and result["duplicates"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
