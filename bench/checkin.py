"""Benchmark: agent config check-ins (``GET /api/v1/agent/config`` with ``If-None-Match``) per second.

Creates a fresh database (``otb_bench_checkin`` on DATABASE_URL's server), N boxes with agent
credentials (bulk-created) and their config hashes computed, starts ``uvicorn config.asgi:application
--workers 2`` (DEBUG=0), then 2 client processes x 32 keep-alive coroutines poll the config endpoint
with the box's current ETag for ~10 s (``--full``: 10000 boxes, 30 s). Every answer should be an empty
304 (the hot path: one query). Prints exactly one JSON line:

{"bench": "checkin", "polls_per_s": ..., "p50_ms": ..., "p99_ms": ..., "not_304": 0}
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

from common import (
    base_database_url,
    bench_database_url,
    free_port,
    log,
    percentile,
    recreate_database,
    uvicorn_start,
    wait_healthy,
)

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
BENCH_DB = "otb_bench_checkin"
CLIENT_PROCESSES = 2
COROUTINES_PER_PROCESS = 32
WARMUP_S = 1.5


def seed(count: int) -> list[tuple[str, str]]:
    """Migrate; create ``count`` boxes with one live agent credential each and their config hash.
    Returns (agent token, config hash) pairs."""
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connections

    from fleet.core.models import AgentCredential, Box
    from fleet.core.tokens import TokenKind, token_issue
    from provisioning.services.configuration import boxes_config_refresh

    call_command("migrate", verbosity=0)
    boxes = [Box(serial=f"CHECKIN{index:07d}") for index in range(count)]
    Box.objects.bulk_create(boxes, batch_size=2000)
    tokens: dict[uuid.UUID, str] = {}
    credentials = []
    for box in boxes:
        issued = token_issue(TokenKind.AGENT)
        tokens[box.pk] = issued.value
        credentials.append(AgentCredential(box=box, token_hash=issued.digest))
    AgentCredential.objects.bulk_create(credentials, batch_size=2000)
    for start in range(0, count, 2000):
        chunk = [box.pk for box in boxes[start : start + 2000]]
        boxes_config_refresh(boxes=Box.objects.filter(pk__in=chunk))
    hashes = dict(Box.objects.values_list("pk", "config_hash"))
    connections.close_all()
    missing = sum(1 for value in hashes.values() if not value)
    if missing:
        raise RuntimeError(f"{missing} boxes have no config hash")
    return [(tokens[pk], hashes[pk]) for pk in tokens]


async def _poll(
    base_url: str, boxes: list[tuple[str, str]], start_at: float, stop_at: float, seed_value: int
) -> tuple[list[float], int, int]:
    import httpx

    rng = random.Random(seed_value)
    latencies: list[float] = []
    not_304 = 0
    errors = 0
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)

    async def one_client() -> None:
        nonlocal not_304, errors
        async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=30) as client:
            while True:
                now = time.perf_counter()
                if now >= stop_at:
                    return
                token, config_hash = boxes[rng.randrange(len(boxes))]
                headers = {"Authorization": f"Bearer {token}", "If-None-Match": f'"{config_hash}"'}
                started = time.perf_counter()
                try:
                    response = await client.get("/api/v1/agent/config", headers=headers)
                except httpx.HTTPError:
                    errors += 1
                    continue
                finished = time.perf_counter()
                if started >= start_at:
                    latencies.append(finished - started)
                    if response.status_code != 304:
                        not_304 += 1

    await asyncio.gather(*(one_client() for _ in range(COROUTINES_PER_PROCESS)))
    return latencies, not_304, errors


def client_process(
    base_url: str,
    boxes: list[tuple[str, str]],
    start_at: float,
    stop_at: float,
    seed_value: int,
    queue: object,
) -> None:
    result = asyncio.run(_poll(base_url, boxes, start_at, stop_at, seed_value))
    queue.put(result)  # type: ignore[attr-defined]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--full", action="store_true", help="10000 boxes for 30 s instead of 2000 for 10 s")
    parser.add_argument("--boxes", type=int, default=None)
    parser.add_argument("--seconds", type=float, default=None)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    count = args.boxes or (10_000 if args.full else 2_000)
    seconds = args.seconds or (30.0 if args.full else 10.0)

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
        "OTB_CACHE_PREFIX": "otb-bench-checkin",
        "OTB_CHANNELS_PREFIX": "otb-bench-checkin",
        # A connection pool per uvicorn worker: each request runs in a thread of its own, so
        # per-thread persistent connections would pile up; without either, every poll would connect.
        "DATABASE_CONN_MAX_AGE": "0",
        "DATABASE_POOL_MAX_SIZE": os.environ.get("BENCH_DB_POOL_SIZE", "16"),
    }
    os.environ.update(env)
    seed_started = time.monotonic()
    boxes = seed(count)
    log(f"seeded {count} boxes with agent credentials in {time.monotonic() - seed_started:.1f} s")

    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    server = uvicorn_start(port, args.workers, env)
    try:
        wait_healthy(base_url, server)
        context = multiprocessing.get_context("spawn")
        queue = context.Queue()
        # The clients share one clock (perf_counter is system-wide on Linux): a warm-up, then the window.
        start_at = time.perf_counter() + WARMUP_S + 2.0
        stop_at = start_at + seconds
        processes = [
            context.Process(target=client_process, args=(base_url, boxes, start_at, stop_at, index, queue))
            for index in range(CLIENT_PROCESSES)
        ]
        for process in processes:
            process.start()
        results = [queue.get(timeout=seconds + 120) for _ in processes]
        for process in processes:
            process.join(timeout=30)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()

    latencies = [value for result in results for value in result[0]]
    not_304 = sum(result[1] for result in results)
    errors = sum(result[2] for result in results)
    print(
        json.dumps(
            {
                "bench": "checkin",
                "polls_per_s": round(len(latencies) / seconds, 1),
                "p50_ms": round(percentile(latencies, 0.5) * 1000, 2),
                "p99_ms": round(percentile(latencies, 0.99) * 1000, 2),
                "not_304": not_304,
                "errors": errors,
                "boxes": count,
                "seconds": seconds,
                "clients": CLIENT_PROCESSES * COROUTINES_PER_PROCESS,
                "server_workers": args.workers,
            }
        ),
        flush=True,
    )
    return 0 if not_304 == 0 and errors == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
