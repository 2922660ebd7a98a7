"""Benchmark: idle stock OverTheBox boxes polling ``GET /1.0/devices/{id}/actions/todo`` at the pace the
server sets, against the real ASGI server, and what each poll costs the server.

Creates a fresh database (``otb_bench_otb_poll`` on DATABASE_URL's server) with N boxes, each with an
agent credential and a config hash, and N OTB devices linked to them, confirmed and running their
desired configuration (so every poll is idle). Starts ``uvicorn config.asgi:application --workers 2``
(DEBUG=0). Two client processes emulate the boxes like ``otb-daemon``: a poll (``Content-Type`` and
``X-Overthebox-Version`` headers, the Bearer JWT), then ``sleep 1`` plus the ``wait`` delay the answer
asks for; the boxes start spread over one polling period.

In production each box's curl (its TCP and TLS) ends at nginx, which forwards to the ASGI processes
over a few keep-alive connections (deploy/nginx: ``keepalive 32``): the main figure is measured that
way (32 keep-alive connections). ``direct_*`` is the same with one new connection per poll to
uvicorn (no nginx). Server CPU (user+system of the uvicorn processes, from /proc) over the window is
divided by the polls answered. The baseline, in the same run with the same boxes, pacing and
connections: the agents' config poll (``GET /api/v1/agent/config`` with ``If-None-Match``, answered
304 by its own fast path: a checksum poll). Before the OTB phase each box polls ``PREWARM_POLLS``
times (2.5 s per 1000 boxes): each server process keeps the idle answers of the boxes it has seen
(otbcompat/fastpath.py), as in production after a few polling periods. Quick mode: 2000 boxes,
10 s + 5 s + 6.7 s; ``--full``: 10000 boxes, 60 s + 30 s + 40 s. The CPU per poll depends on the
rate: at ~180 polls/s (quick) each poll wakes an idle process by itself, at ~900 polls/s (full, the
issue's 10,000 boxes) the wake-ups are shared; the target is judged at the full size. Prints exactly
one JSON line:

{"bench": "otb_poll", "boxes": ..., "polls_per_s": ..., "cpu_ms_per_poll": ..., "p99_ms": ..., ...}
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common import (
    base_database_url,
    bench_database_url,
    cpu_ms_per,
    cpu_snapshot,
    free_port,
    log,
    percentile,
    raise_nofile,
    recreate_database,
    uvicorn_start,
    wait_healthy,
)

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
BENCH_DB = "otb_bench_otb_poll"
CLIENT_PROCESSES = 2
IDLE_SAMPLE_S = 3.0
UPSTREAM_CONNECTIONS = 16  # per client process: 32 in all, nginx's ``keepalive 32``
LOOP_SLEEP_S = 1.0  # otb-daemon's `sleep 1` between two runs of its loop
# Before the OTB phases each box polls this many times back to back: with two server processes and
# any keep-alive connection, each process has then seen (and kept the idle answer of) nearly every
# box, as after a few polling periods in production; the answers are kept OTB_COMPAT_IDLE_CACHE_S.
PREWARM_POLLS = 4


def seed(count: int) -> list[dict[str, str]]:
    """Migrate; create ``count`` boxes (agent credential, config hash) and a linked, confirmed OTB
    device for each. Returns per box: device id, JWT, agent token, config hash."""
    import django

    django.setup()
    from django.conf import settings
    from django.core.management import call_command
    from django.db import connection, connections
    from django.utils import timezone

    from fleet.core.models import AgentCredential, Box
    from fleet.core.tokens import TokenKind, token_issue
    from otbcompat.jwt import jwt_encode
    from otbcompat.models import OtbDevice
    from otbcompat.services import token_digest

    call_command("migrate", verbosity=0)
    boxes = [Box(serial=f"OTBPOLL{index:07d}", protocol="otb") for index in range(count)]
    Box.objects.bulk_create(boxes, batch_size=2000)
    agent_tokens: dict[uuid.UUID, str] = {}
    credentials = []
    for box in boxes:
        issued = token_issue(TokenKind.AGENT)
        agent_tokens[box.pk] = issued.value
        credentials.append(AgentCredential(box=box, token_hash=issued.digest))
    AgentCredential.objects.bulk_create(credentials, batch_size=2000)
    # A config hash per box (the polls only compare it; building real configs would take longer
    # than the measurement), applied: every OTB poll is idle and every agent poll a 304.
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE fleet_box SET config_hash = md5(id::text), applied_config_hash = md5(id::text)"
        )
    hashes = dict(Box.objects.values_list("pk", "config_hash"))
    now = timezone.now()
    devices = [
        OtbDevice(
            id=uuid.uuid4(),
            mac="02:00:" + ":".join(f"{index >> shift & 255:02x}" for shift in (24, 16, 8, 0)),
            board="bench",
            token_hash=token_digest(uuid.uuid4().hex),
            box=box,
            linked_at=now,
            confirmed_at=now,
        )
        for index, box in enumerate(boxes)
    ]
    OtbDevice.objects.bulk_create(devices, batch_size=2000)
    issued_at = int(time.time())
    out = []
    for device, box in zip(devices, boxes, strict=True):
        claims = {"sub": str(device.id), "gen": 1, "iat": issued_at, "exp": issued_at + 24 * 3600}
        out.append(
            {
                "device": str(device.id),
                "jwt": jwt_encode(claims, settings.OTB_COMPAT_JWT_KEYS),
                "agent_token": agent_tokens[box.pk],
                "config_hash": hashes[box.pk],
            }
        )
    connections.close_all()
    return out


def otb_request(box: dict[str, str], host: str) -> bytes:
    return (
        f"GET /1.0/devices/{box['device']}/actions/todo HTTP/1.1\r\nHost: {host}\r\n"
        "User-Agent: curl/8.5.0\r\nAccept: */*\r\nContent-Type: application/json\r\n"
        f"X-Overthebox-Version: 1.1.3\r\nAuthorization: Bearer {box['jwt']}\r\n\r\n"
    ).encode()


def config_request(box: dict[str, str], host: str) -> bytes:
    return (
        f"GET /api/v1/agent/config HTTP/1.1\r\nHost: {host}\r\nUser-Agent: curl/8.5.0\r\nAccept: */*\r\n"
        f'Authorization: Bearer {box["agent_token"]}\r\nIf-None-Match: "{box["config_hash"]}"\r\n\r\n'
    ).encode()


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    return status, (await reader.readexactly(length) if length else b"")


async def one_call(port: int, request: bytes) -> tuple[int, bytes]:
    """One curl-like call: connect, send, read the status, headers and Content-Length body, close."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        return await read_response(reader)
    finally:
        writer.close()


class UpstreamPool:
    """What nginx does in production (deploy/nginx: ``keepalive 32`` to the upstream): the boxes'
    requests reuse a few keep-alive connections; each box's own TCP and TLS end at nginx."""

    def __init__(self, port: int, size: int) -> None:
        self.port = port
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self.slots = asyncio.Semaphore(size)

    async def call(self, request: bytes) -> tuple[int, bytes]:
        async with self.slots:
            reused = bool(self.idle)
            connection = self.idle.pop() if reused else await asyncio.open_connection("127.0.0.1", self.port)
            try:
                connection[1].write(request)
                answer = await read_response(connection[0])
            except (OSError, asyncio.IncompleteReadError):
                connection[1].close()
                if not reused:
                    raise
                # the server closed an idle keep-alive connection: nginx retries on a new one
                connection = await asyncio.open_connection("127.0.0.1", self.port)
                connection[1].write(request)
                answer = await read_response(connection[0])
            self.idle.append(connection)
            return answer


async def boxes_run(
    port: int,
    boxes: list[dict[str, str]],
    mode: str,
    start_at: float,
    stop_at: float,
    seed_value: int,
    pace_s: float,
    keepalive: bool,
    prewarm_until: float | None = None,
) -> dict[str, Any]:
    rng = random.Random(seed_value)
    upstream = UpstreamPool(port, UPSTREAM_CONNECTIONS) if keepalive else None
    latencies: list[float] = []
    counts: dict[str, int] = {"polls": 0, "errors": 0, "not_idle": 0, "prewarm_errors": 0}
    host = f"127.0.0.1:{port}"

    async def one_box(box: dict[str, str]) -> None:
        request = otb_request(box, host) if mode == "otb" else config_request(box, host)
        if prewarm_until is not None:
            # boxes that have been polling for a while: each server process has seen each box (its
            # idle answer is in memory), as in production after a few polling periods
            await asyncio.sleep(rng.uniform(0, max(0.0, prewarm_until - time.perf_counter() - 1.0)))
            for _ in range(PREWARM_POLLS):
                try:
                    await (upstream.call(request) if upstream is not None else one_call(port, request))
                except (OSError, asyncio.IncompleteReadError, ValueError, IndexError):
                    counts["prewarm_errors"] += 1
            await asyncio.sleep(max(0.0, prewarm_until - time.perf_counter()))
        # spread over one polling period, like boxes that booted at different times
        await asyncio.sleep(rng.uniform(0, LOOP_SLEEP_S + pace_s))
        while time.perf_counter() < stop_at:
            started = time.perf_counter()
            delay = pace_s
            try:
                if upstream is not None:
                    status, body = await upstream.call(request)
                else:
                    status, body = await one_call(port, request)
            except (OSError, asyncio.IncompleteReadError, ValueError, IndexError):
                counts["errors"] += 1
                await asyncio.sleep(1)
                continue
            finished = time.perf_counter()
            measured = start_at <= started and finished <= stop_at
            if mode == "otb":
                try:
                    answer = json.loads(body)
                    idle = status == 200 and answer.get("action") == "wait"
                    delay = float(answer.get("arguments", {}).get("delay", 10)) if idle else 0.0
                except ValueError:
                    idle, delay = False, 0.0
            else:
                idle = status == 304
            if measured:
                latencies.append(finished - started)
                counts["polls"] += 1
                counts["not_idle"] += not idle
            await asyncio.sleep(min(LOOP_SLEEP_S + delay, max(0.0, stop_at - time.perf_counter())))

    await asyncio.gather(*(one_box(box) for box in boxes))
    return {"latencies": latencies, **counts}


def client_process(
    port: int,
    boxes: list[dict[str, str]],
    mode: str,
    start_at: float,
    stop_at: float,
    seed_value: int,
    pace_s: float,
    keepalive: bool,
    prewarm_until: float | None,
    queue: object,
) -> None:
    raise_nofile()
    result = asyncio.run(
        boxes_run(port, boxes, mode, start_at, stop_at, seed_value, pace_s, keepalive, prewarm_until)
    )
    queue.put(result)  # type: ignore[attr-defined]


@dataclass
class Phase:
    polls: int
    polls_per_s: float
    p50_ms: float
    p99_ms: float
    errors: int
    not_idle: int
    cpu_ms: dict[str, float]


def phase(
    port: int,
    server_pgid: int,
    boxes: list[dict[str, str]],
    mode: str,
    seconds: float,
    pace_s: float,
    *,
    keepalive: bool = True,
    prewarm_s: float = 0.0,
) -> Phase:
    """Run the emulated boxes for ``prewarm_s`` of pre-warming (``PREWARM_POLLS`` polls per box, spread
    over it), a few seconds of warm-up, then ``seconds`` measured; returns the polls counted in the
    window, their latencies and the CPU per poll of each part."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    # the boxes start spread uniformly over one polling period, so the rate is steady from the start
    prewarm_until = time.perf_counter() + 2.0 + prewarm_s if prewarm_s else None
    warmup = 3.0 + (prewarm_until - time.perf_counter() if prewarm_until else 0.0)
    start_at = time.perf_counter() + warmup
    stop_at = start_at + seconds
    shares = [boxes[index::CLIENT_PROCESSES] for index in range(CLIENT_PROCESSES)]
    processes = [
        context.Process(
            target=client_process,
            args=(port, share, mode, start_at, stop_at, index, pace_s, keepalive, prewarm_until, queue),
        )
        for index, share in enumerate(shares)
    ]
    for process in processes:
        process.start()
    time.sleep(max(0.0, start_at - time.perf_counter()))
    before = cpu_snapshot(server_pgid)
    time.sleep(max(0.0, stop_at - time.perf_counter()))
    after = cpu_snapshot(server_pgid)
    results = [queue.get(timeout=seconds + warmup + 120) for _ in processes]
    for process in processes:
        process.join(timeout=30)
    latencies = [value for result in results for value in result["latencies"]]
    polls = sum(result["polls"] for result in results)
    return Phase(
        polls=polls,
        polls_per_s=round(polls / seconds, 1),
        p50_ms=round(percentile(latencies, 0.5) * 1000, 2),
        p99_ms=round(percentile(latencies, 0.99) * 1000, 2),
        errors=sum(result["errors"] + result["prewarm_errors"] for result in results),
        not_idle=sum(result["not_idle"] for result in results),
        cpu_ms=cpu_ms_per(before, after, polls),
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--full", action="store_true", help="10000 boxes, 60 s + 30 s")
    parser.add_argument("--boxes", type=int, default=None)
    parser.add_argument("--seconds", type=float, default=None)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--delay", type=int, default=10, help="the wait delay the server gives (s)")
    args = parser.parse_args()
    count = args.boxes or (10_000 if args.full else 2_000)
    seconds = args.seconds or (60.0 if args.full else 10.0)
    raise_nofile()

    database_url, maintenance_url = bench_database_url(base_database_url(), BENCH_DB)
    recreate_database(maintenance_url, BENCH_DB)
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "OTB_ENV": "development",
        "DEBUG": "0",
        "LOG_LEVEL": "WARNING",
        "OTB_CACHE_PREFIX": "otb-bench-otb-poll",
        "OTB_CHANNELS_PREFIX": "otb-bench-otb-poll",
        "DATABASE_CONN_MAX_AGE": "0",
        "DATABASE_POOL_MAX_SIZE": os.environ.get("BENCH_DB_POOL_SIZE", "16"),
        "OTB_COMPAT_POLL_DELAY_S": str(args.delay),
    }
    os.environ.update(env)
    seed_started = time.monotonic()
    boxes = seed(count)
    log(f"seeded {count} boxes with linked OTB devices in {time.monotonic() - seed_started:.1f} s")

    port = free_port()
    server = uvicorn_start(port, args.workers, env)
    try:
        wait_healthy(f"http://127.0.0.1:{port}", server)
        # what the two idle server processes use by themselves (timers, the presence writer)
        time.sleep(1.0)
        idle_before = cpu_snapshot(server.pid)
        time.sleep(IDLE_SAMPLE_S)
        idle_ms_per_s = cpu_ms_per(idle_before, cpu_snapshot(server.pid), 1)["server"] / IDLE_SAMPLE_S
        otb = phase(port, server.pid, boxes, "otb", seconds, args.delay, prewarm_s=count / 1000 * 2.5)
        log(f"otb_poll behind nginx keep-alive: {otb}")
        direct = phase(port, server.pid, boxes, "otb", seconds / 2, args.delay, keepalive=False)
        log(f"otb_poll, one connection per poll: {direct}")
        baseline = phase(port, server.pid, boxes, "config", seconds * 2 / 3, args.delay)
        log(f"baseline (agent config 304): {baseline}")
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()

    otb_cpu = otb.cpu_ms["server"]
    baseline_cpu = baseline.cpu_ms["server"]
    print(
        json.dumps(
            {
                "bench": "otb_poll",
                "boxes": count,
                "polls_per_s": otb.polls_per_s,
                "cpu_ms_per_poll": otb_cpu,
                "p99_ms": otb.p99_ms,
                "p50_ms": otb.p50_ms,
                # the same, less what the idle server uses anyway: the cost of one more poll
                "marginal_cpu_ms_per_poll": round(otb_cpu - idle_ms_per_s / max(otb.polls_per_s, 1.0), 2),
                "idle_server_cpu_ms_per_s": round(idle_ms_per_s, 1),
                "wait_delay_s": args.delay,
                "postgres_cpu_ms_per_poll": otb.cpu_ms["postgres"],
                "redis_cpu_ms_per_poll": otb.cpu_ms["redis"],
                "direct_cpu_ms_per_poll": direct.cpu_ms["server"],
                "direct_p99_ms": direct.p99_ms,
                "baseline": "agent config poll (304 fast path), same boxes, pacing and connections",
                "baseline_cpu_ms_per_poll": baseline_cpu,
                "baseline_p99_ms": baseline.p99_ms,
                "ratio_to_baseline": round(otb_cpu / baseline_cpu, 2) if baseline_cpu else None,
                "not_idle": otb.not_idle,
                "errors": otb.errors + baseline.errors,
                "direct_errors": direct.errors,
                "direct_not_idle": direct.not_idle,
                "seconds": seconds,
                "server_workers": args.workers,
            }
        ),
        flush=True,
    )
    # Judged on the production shape (behind nginx); one connection per poll straight to uvicorn is
    # reported (direct_*) but may saturate a small machine at the full size.
    return 0 if otb.not_idle == 0 and not otb.errors else 1


if __name__ == "__main__":
    sys.exit(main())
