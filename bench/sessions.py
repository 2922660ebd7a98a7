"""Idle agent sessions on ONE uvicorn process: memory per session and reconnect storm time.

Quick: 2000 sessions (full: 10000) held by light websocket clients in separate processes (hello, then
a heartbeat every 20 s). Measures the server's RSS before and after -> KiB per session; then kills the
server (SIGKILL), starts it again on the same port and times until every session has said hello again.
Prints one JSON line: {"bench": "sessions", "sessions": ..., "kib_per_session": ..., "reconnect_s": ...,
"failed": 0}
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import random
import sys
import time
from typing import Any

from common import cpu_ms_per, cpu_snapshot
from ingest import HELLO, Server, create_boxes, drop_database, fresh_database, log, raise_nofile


async def _session(url: str, token: str, index: int, epochs: Any, epoch: Any, stop: Any) -> None:
    import websockets

    while not stop.is_set():
        try:
            async with websockets.connect(
                url, additional_headers={"Authorization": f"Bearer {token}"}, open_timeout=120,
                ping_interval=None, compression=None, max_size=2**20,
            ) as ws:  # fmt: skip
                await ws.send(HELLO)
                while True:
                    frame = json.loads(await asyncio.wait_for(ws.recv(), timeout=120))
                    if frame.get("type") == "welcome":
                        break
                epochs[index] = epoch.value
                while not stop.is_set():
                    try:
                        await asyncio.wait_for(ws.recv(), timeout=20)
                    except TimeoutError:
                        await ws.send(json.dumps({"type": "heartbeat", "ts": time.time()}))
        except Exception:  # server gone or refusing: back off with jitter, like the agent
            epochs[index] = -1
            await asyncio.sleep(random.uniform(0.2, 1.5))


def session_worker(
    url: str, tokens: list[tuple[int, str]], epochs: Any, epoch: Any, stop: Any, ramp: float
) -> None:
    raise_nofile()

    async def main() -> None:
        async def delayed(index: int, token: str) -> None:
            await asyncio.sleep(random.uniform(0, ramp))
            await _session(url, token, index, epochs, epoch, stop)

        tasks = [asyncio.ensure_future(delayed(index, token)) for index, token in tokens]
        while not stop.is_set():
            await asyncio.sleep(0.2)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    asyncio.run(main())


def _cpu_of(processes: list[Any]) -> float:
    """User+system CPU seconds of the load-generator processes so far."""
    import psutil

    total = 0.0
    for process in processes:
        times = psutil.Process(process.pid).cpu_times()
        total += times.user + times.system
    return total


def count(epochs: Any, value: int) -> int:
    return sum(1 for item in epochs[:] if item == value)


def main() -> int:
    import psutil

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--full", action="store_true")
    parser.add_argument("--sessions", type=int)
    parser.add_argument("--workers", type=int, default=4)
    args = parser.parse_args()
    sessions = args.sessions or (10000 if args.full else 2000)
    raise_nofile()

    name = "otb_bench_sessions"
    database_url = fresh_database(name)
    boxes = create_boxes(database_url, sessions, "BENCH-SESSIONS")
    server = Server(database_url, extra_env={"OTB_HEARTBEAT_INTERVAL_S": "30"})
    server.start()
    assert server.process is not None
    context = multiprocessing.get_context("spawn")
    epochs = context.Array("i", [-1] * sessions, lock=False)
    epoch = context.Value("i", 0, lock=False)
    stop = context.Event()
    workers = []
    report: dict[str, Any] = {"bench": "sessions", "sessions": sessions}
    try:
        time.sleep(1.0)
        rss_before = psutil.Process(server.process.pid).memory_info().rss
        url = f"ws://127.0.0.1:{server.port}/ws/agent/"
        indexed = list(enumerate(box["agent_token"] for box in boxes))
        for i in range(args.workers):
            process = context.Process(
                target=session_worker,
                args=(url, indexed[i :: args.workers], epochs, epoch, stop, sessions / 1000),
            )
            process.start()
            workers.append(process)
        started = time.monotonic()
        deadline = started + (600 if args.full else 120)
        while count(epochs, 0) < sessions and time.monotonic() < deadline:
            time.sleep(0.5)
        connect_s = time.monotonic() - started
        log(f"{count(epochs, 0)}/{sessions} sessions up after {connect_s:.1f} s")
        time.sleep(3.0)
        rss_after = psutil.Process(server.process.pid).memory_info().rss
        report["connect_s"] = round(connect_s, 1)
        report["server_rss_mib"] = round(rss_after / 2**20, 1)
        report["kib_per_session"] = round((rss_after - rss_before) / 1024 / max(1, count(epochs, 0)), 1)

        # The reconnect storm: kill the server, start it again, every agent comes back.
        epoch.value = 1
        server.kill()
        # (the new server's CPU counts from zero: its start-up is included)
        cpu_before, clients_before = cpu_snapshot(-1), _cpu_of(workers)
        restart = time.monotonic()
        server.start(timeout=60)
        assert server.process is not None
        deadline = restart + (600 if args.full else 120)
        while count(epochs, 1) < sessions and time.monotonic() < deadline:
            time.sleep(0.25)
        report["reconnect_s"] = round(time.monotonic() - restart, 1)
        # CPU per reconnected session by component (ms): where the storm's time went
        cpu = cpu_ms_per(cpu_before, cpu_snapshot(server.process.pid), count(epochs, 1))
        cpu["client"] = round((_cpu_of(workers) - clients_before) * 1000 / max(1, count(epochs, 1)), 2)
        report["reconnect_cpu_ms_per_session"] = cpu
        report["failed"] = sessions - count(epochs, 1)
        log(f"reconnected {count(epochs, 1)}/{sessions} in {report['reconnect_s']} s")
    finally:
        stop.set()
        for process in workers:
            process.join(30)
            if process.is_alive():
                process.kill()
        server.stop()
        drop_database(name)
    print(json.dumps(report), flush=True)
    return 0 if report.get("failed") == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
