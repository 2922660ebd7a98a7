"""Telemetry ingest benchmark: durable-acked messages/s on ONE uvicorn process, against a bare echo.

N simulated agents (quick: 200 connections, full: 1000) hold real websocket sessions and send
telemetry messages (one sample, 4 WANs each) as fast as acks allow, with a small window in flight per
connection. The same load then runs against the bare echo consumer (bench/echo.py) on the same
server. The load generators are separate processes. Afterwards SQL checks that every acked seq is
stored (lost) and none twice (duplicated). Prints one JSON line:

{"bench": "ingest", "msgs_per_s": ..., "echo_msgs_per_s": ..., "ratio": ..., "p50_ms": ..., "p99_ms": ...,
 "lost": 0, "duplicated": 0}

The helpers here (fresh database, boxes with tokens, the server process) are shared by bench/sessions.py
and bench/agent.py.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from common import base_database_url, cpu_ms_per, cpu_snapshot, free_port, log, raise_nofile

ROOT = Path(__file__).resolve().parent.parent


def fresh_database(name: str) -> str:
    """Drop/create database ``name`` on DATABASE_URL's server, migrate it; returns its URL."""
    import psycopg

    base = base_database_url()
    parts = urlsplit(base)
    admin_url = urlunsplit(parts._replace(path="/postgres"))
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = %s AND pid <> pg_backend_pid()",
            [name],
        )
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    url = urlunsplit(parts._replace(path=f"/{name}"))
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "-v0"],
        cwd=ROOT,
        env={**os.environ, "DATABASE_URL": url},
        check=True,
    )
    return url


def drop_database(name: str) -> None:
    import psycopg

    parts = urlsplit(base_database_url())
    with psycopg.connect(urlunsplit(parts._replace(path="/postgres")), autocommit=True) as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = %s AND pid <> pg_backend_pid()",
            [name],
        )
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')


def create_boxes(database_url: str, count: int, prefix: str) -> list[dict[str, str]]:
    """``count`` imported boxes with live agent tokens (bulk ORM inserts, so model defaults apply):
    [{serial, box_id, agent_token}]. Sets up Django against ``database_url`` in this process."""
    os.environ["DATABASE_URL"] = database_url
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    from django.db import connection

    from fleet.core.models import AgentCredential, Box
    from fleet.core.tokens import TokenKind, token_issue

    boxes, credentials, out = [], [], []
    for index in range(count):
        box = Box(serial=f"{prefix}-{index:06d}", model="OTB-bench")
        issued = token_issue(TokenKind.AGENT)
        boxes.append(box)
        credentials.append(AgentCredential(box=box, token_hash=issued.digest))
        out.append({"serial": box.serial, "box_id": str(box.pk), "agent_token": issued.value})
    Box.objects.bulk_create(boxes, batch_size=2000)
    AgentCredential.objects.bulk_create(credentials, batch_size=2000)
    connection.close()
    return out


class Server:
    """One uvicorn worker serving config.asgi (what production runs N of)."""

    def __init__(
        self,
        database_url: str,
        *,
        port: int | None = None,
        extra_env: dict[str, str] | None = None,
        app: str = "config.asgi:application",
    ) -> None:
        self.app = app
        self.port = port or free_port()
        self.env = {
            **os.environ,
            "DATABASE_URL": database_url,
            "OTB_ENV": "development",
            "DEBUG": "0",
            "LOG_LEVEL": "WARNING",
            "OTB_PROCESS_NAME": "bench-server",
            **(extra_env or {}),
        }
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 30) -> None:
        command = [
            # BENCH_ASGI_APP: wrap the application (a profiler) without changing the benchmark
            sys.executable, "-m", "uvicorn", os.environ.get("BENCH_ASGI_APP", self.app),
            "--host", "127.0.0.1",
            "--port", str(self.port), "--ws-max-size", "65536", "--log-level", "warning",
            "--no-access-log", "--backlog", "16384", "--ws", os.environ.get("BENCH_WS_IMPL", "auto"),
        ]  # fmt: skip
        self.process = subprocess.Popen(
            command, cwd=ROOT, env=self.env, preexec_fn=raise_nofile, start_new_session=True
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=1) as response:
                    if response.status == 200:
                        return
            except OSError:
                time.sleep(0.2)
        raise RuntimeError("server did not start")

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()


# -- the load generator (runs in worker processes) ------------------------------------------------------

HELLO = json.dumps(
    {
        "type": "hello", "v": 1, "agent_version": "bench", "firmware_version": "1.0.0", "model": "OTB-bench",
        "applied_config_hash": None, "boot_id": "bench-boot", "uptime_s": 1, "dropped_samples": 0,
    }
)  # fmt: skip


def telemetry_template() -> str:
    wans = [
        {"iface": f"wan{i}", "label": f"WAN {i}", "kind": kind, "up": True, "rtt_ms": 12.5 + i,
         "jitter_ms": 1.5, "loss_pct": 0.0, "rx_bps": 1_000_000 * (i + 1), "tx_bps": 250_000 * (i + 1),
         "public_ip": f"198.51.100.{i + 1}", "subflows": 2}
        for i, kind in enumerate(("fiber", "vdsl", "lte", "5g"))
    ]  # fmt: skip
    sample = {"ts": 0.0, "cpu_pct": 23.5, "mem_pct": 41.0, "load1": 0.42, "uptime_s": 3600, "tunnel_up": True,
              "conntrack": 812, "rx_bps": 10_000_000, "tx_bps": 2_500_000, "wans": wans}  # fmt: skip
    text = json.dumps({"type": "telemetry", "seq": 999999999, "samples": [sample]})
    return text.replace('"seq": 999999999', '"seq": {seq}').replace('"ts": 0.0', '"ts": {ts}')


async def _connection(
    url: str, token: str | None, duration: float, window: int, result: dict[str, Any]
) -> None:
    import websockets

    template = telemetry_template().replace("{", "{{").replace("}", "}}")
    template = template.replace("{{seq}}", "{seq}").replace("{{ts}}", "{ts}")
    headers = {"Authorization": f"Bearer {token}"} if token else None
    acked: list[int] = result.setdefault("acked", [])
    latencies: list[float] = result.setdefault("latencies", [])
    try:
        async with websockets.connect(url, additional_headers=headers, max_size=2**20, open_timeout=60,
                                      ping_interval=None, compression=None) as ws:  # fmt: skip
            await ws.send(HELLO)
            welcome = json.loads(await ws.recv())
            seq = int(welcome.get("last_acked_seq", 0))
            sent_at: dict[int, float] = {}
            deadline = time.monotonic() + duration
            while True:
                now = time.monotonic()
                while len(sent_at) < window and now < deadline:
                    seq += 1
                    sent_at[seq] = now
                    await ws.send(template.format(seq=seq, ts=time.time()))
                if not sent_at:
                    break
                frame = json.loads(await asyncio.wait_for(ws.recv(), timeout=30))
                if frame.get("type") == "ack":
                    started = sent_at.pop(frame["seq"], None)
                    if started is not None:
                        acked.append(frame["seq"])
                        latencies.append(time.monotonic() - started)
                elif frame.get("type") == "error":
                    result["errors"] = result.get("errors", 0) + 1
                    if frame.get("code") == "storage_unavailable":
                        return
    except Exception as exc:
        result["failed"] = f"{type(exc).__name__}: {exc}"


def load_worker(
    url: str, tokens: list[str | None], duration: float, window: int, start_at: float, queue: Any
) -> None:
    """Worker process: hold one connection per token and pump telemetry until the deadline."""
    raise_nofile()

    async def main() -> list[dict[str, Any]]:
        await asyncio.sleep(max(0.0, start_at - time.time()))
        results: list[dict[str, Any]] = [{} for _ in tokens]
        await asyncio.gather(
            *(_connection(url, token, duration, window, results[i]) for i, token in enumerate(tokens))
        )
        return results

    queue.put(asyncio.run(main()))


def run_load(
    url: str, tokens: list[str | None], *, duration: float, window: int, workers: int
) -> dict[str, Any]:
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    chunks = [tokens[i::workers] for i in range(workers)]
    start_at = time.time() + 2.0
    processes = [
        context.Process(target=load_worker, args=(url, chunk, duration, window, start_at, queue))
        for chunk in chunks
    ]
    for process in processes:
        process.start()
    results_by_chunk = [queue.get(timeout=duration + 120) for _ in processes]
    for process in processes:
        process.join(10)
    # Re-associate results to tokens (chunk i holds tokens[i::workers]; queue order is arbitrary, so
    # results carry no token: the caller only needs per-connection acked seqs in token order when the
    # tokens are distinct, which we recover by matching counts below).
    results = [result for chunk in results_by_chunk for result in chunk]
    latencies = sorted(latency for result in results for latency in result.get("latencies", []))
    total = sum(len(result.get("acked", [])) for result in results)
    failed = [result["failed"] for result in results if "failed" in result]
    return {
        "acked": total,
        "msgs_per_s": total / duration,
        "p50_ms": latencies[len(latencies) // 2] * 1000 if latencies else None,
        "p99_ms": latencies[int(len(latencies) * 0.99)] * 1000 if latencies else None,
        "failed": failed,
        "errors": sum(result.get("errors", 0) for result in results),
        "results": results,
    }


def verify_storage(
    database_url: str, boxes: list[dict[str, str]], acked_by_box: dict[str, list[int]]
) -> dict:
    import psycopg

    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT box_id::text, seq, count(*) FROM telemetry_box_sample GROUP BY box_id, seq"
        ).fetchall()
    stored: dict[str, set[int]] = {}
    duplicated = 0
    for box_id, seq, count in rows:
        stored.setdefault(box_id, set()).add(seq)
        duplicated += count - 1
    lost = sum(
        1 for box_id, seqs in acked_by_box.items() for seq in seqs if seq not in stored.get(box_id, ())
    )
    return {"lost": lost, "duplicated": duplicated, "stored_messages": len(rows)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--full", action="store_true")
    parser.add_argument("--connections", type=int)
    parser.add_argument("--duration", type=float)
    parser.add_argument("--window", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--keep-db", action="store_true")
    args = parser.parse_args()
    connections = args.connections or (1000 if args.full else 200)
    duration = args.duration or (30.0 if args.full else 10.0)
    raise_nofile()

    name = "otb_bench_ingest"
    database_url = fresh_database(name)
    boxes = create_boxes(database_url, connections, "BENCH-INGEST")
    server = Server(
        database_url, extra_env={"OTB_TELEMETRY_MAX_PENDING": "100000"}, app="bench.echo:application"
    )
    server.start()
    try:
        base = f"ws://127.0.0.1:{server.port}"
        log(f"echo baseline: {connections} connections for {duration:.0f} s")
        assert server.process is not None
        cpu_start = cpu_snapshot(server.process.pid)
        echo = run_load(f"{base}/ws/echo/", [None] * connections, duration=duration, window=args.window,
                        workers=args.workers)  # fmt: skip
        cpu_echo = cpu_snapshot(server.process.pid)
        log(f"echo: {echo['msgs_per_s']:.0f} msg/s; ingest: {connections} agents for {duration:.0f} s")
        # One connection per box, in box order, so acked seqs can be attributed to boxes.
        ingest = run_load_attributed(base, boxes, duration=duration, window=args.window, workers=args.workers)
        cpu_ingest = cpu_snapshot(server.process.pid)
        log(f"ingest: {ingest['msgs_per_s']:.0f} msg/s, failures={len(ingest['failed'])}")
        for reason in sorted(set(ingest["failed"]))[:5]:
            log(f"  failure: {reason[:300]}")
    finally:
        server.stop()
    check = verify_storage(database_url, boxes, ingest["acked_by_box"])
    if not args.keep_db:
        drop_database(name)
    report = {
        "bench": "ingest",
        "connections": connections,
        "duration_s": duration,
        "window": args.window,
        "msgs_per_s": round(ingest["msgs_per_s"], 1),
        "echo_msgs_per_s": round(echo["msgs_per_s"], 1),
        "ratio": round(ingest["msgs_per_s"] / echo["msgs_per_s"], 3) if echo["msgs_per_s"] else None,
        "p50_ms": round(ingest["p50_ms"], 2) if ingest["p50_ms"] is not None else None,
        "p99_ms": round(ingest["p99_ms"], 2) if ingest["p99_ms"] is not None else None,
        "lost": check["lost"],
        "duplicated": check["duplicated"],
        "failed_connections": len(ingest["failed"]),
        "error_frames": ingest["errors"],
        # CPU per message by component (microseconds): what the two cores were spent on in each phase
        # (the load includes its setup: connecting, hello).
        "echo_cpu_us_per_msg": cpu_ms_per(cpu_start, cpu_echo, echo["acked"], unit_s=1e-6),
        "ingest_cpu_us_per_msg": cpu_ms_per(cpu_echo, cpu_ingest, ingest["acked"], unit_s=1e-6),
    }
    print(json.dumps(report), flush=True)
    return 0 if check["lost"] == 0 and check["duplicated"] == 0 and not ingest["failed"] else 1


def attributed_worker(
    url: str, boxes: list[dict[str, str]], duration: float, window: int, start_at: float, queue: Any
) -> None:
    raise_nofile()

    async def main() -> dict[str, dict[str, Any]]:
        await asyncio.sleep(max(0.0, start_at - time.time()))
        results: dict[str, dict[str, Any]] = {box["box_id"]: {} for box in boxes}
        await asyncio.gather(
            *(_connection(url, box["agent_token"], duration, window, results[box["box_id"]]) for box in boxes)
        )
        return results

    queue.put(asyncio.run(main()))


def run_load_attributed(
    base: str, boxes: list[dict[str, str]], *, duration: float, window: int, workers: int
) -> dict[str, Any]:
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    start_at = time.time() + 3.0
    processes = [
        context.Process(
            target=attributed_worker,
            args=(f"{base}/ws/agent/", boxes[i::workers], duration, window, start_at, queue),
        )
        for i in range(workers)
    ]
    for process in processes:
        process.start()
    merged: dict[str, dict[str, Any]] = {}
    for _ in processes:
        merged.update(queue.get(timeout=duration + 180))
    for process in processes:
        process.join(10)
    latencies = sorted(latency for result in merged.values() for latency in result.get("latencies", []))
    total = sum(len(result.get("acked", [])) for result in merged.values())
    return {
        "acked": total,
        "msgs_per_s": total / duration,
        "p50_ms": latencies[len(latencies) // 2] * 1000 if latencies else None,
        "p99_ms": latencies[int(len(latencies) * 0.99)] * 1000 if latencies else None,
        "failed": [result["failed"] for result in merged.values() if "failed" in result],
        "errors": sum(result.get("errors", 0) for result in merged.values()),
        "acked_by_box": {box_id: result.get("acked", []) for box_id, result in merged.items()},
    }


if __name__ == "__main__":
    sys.exit(main())
