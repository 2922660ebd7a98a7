"""Storm helpers run as their own processes (``python tests/faults/storm.py boxes|hold ...``):

- ``boxes DATABASE_URL COUNT PREFIX`` creates imported boxes with live agent tokens (bulk inserts,
  as bench/ingest.py does) and prints them as JSON;
- ``hold URL TOKENS_FILE`` holds one agent session per token (hello, heartbeats), reconnects each one
  with jittered backoff when it ends, and prints a JSON line every second: sessions welcomed now,
  and reconnects so far. A lightweight stand-in for thousands of agents on one core."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

HELLO = {
    "type": "hello", "v": 1, "agent_version": "storm", "firmware_version": "1.0.0", "model": "OTB-storm",
    "applied_config_hash": None, "boot_id": "storm", "uptime_s": 1, "dropped_samples": 0,
}  # fmt: skip


def boxes(database_url: str, count: int, prefix: str) -> None:
    os.environ["DATABASE_URL"] = database_url
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    import django

    django.setup()
    from fleet.core.models import AgentCredential, Box
    from fleet.core.tokens import TokenKind, token_issue

    rows, credentials, out = [], [], []
    for index in range(count):
        box = Box(serial=f"{prefix}-{index:06d}", model="OTB-storm")
        issued = token_issue(TokenKind.AGENT)
        rows.append(box)
        credentials.append(AgentCredential(box=box, token_hash=issued.digest))
        out.append(issued.value)
    Box.objects.bulk_create(rows, batch_size=2000)
    AgentCredential.objects.bulk_create(credentials, batch_size=2000)
    print(json.dumps(out))


async def hold(url: str, tokens: list[str]) -> None:
    import websockets

    state: dict[str, Any] = {"welcomed": 0, "reconnects": 0, "refused": 0}
    semaphore = asyncio.Semaphore(200)

    async def session(token: str) -> None:
        delay = 0.5
        await asyncio.sleep(random.uniform(0, 5))
        while True:
            welcomed = False
            try:
                async with semaphore:
                    ws = await websockets.connect(
                        url, additional_headers={"Authorization": f"Bearer {token}"}, open_timeout=30,
                        ping_interval=None, compression=None,
                    )  # fmt: skip
                async with ws:
                    await ws.send(json.dumps(HELLO))
                    frame = json.loads(await asyncio.wait_for(ws.recv(), 30))
                    if frame.get("type") != "welcome":
                        state["refused"] += 1
                        delay = max(delay, float(frame.get("retry_after_s") or 1.0))
                        raise ConnectionError(frame.get("code"))
                    welcomed = True
                    state["welcomed"] += 1
                    delay = 0.5
                    while True:
                        await ws.send(json.dumps({"type": "heartbeat", "ts": time.time()}))
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(ws.recv(), 30)
                        await asyncio.sleep(5)
            except Exception:
                pass
            if welcomed:
                state["welcomed"] -= 1
            state["reconnects"] += 1
            await asyncio.sleep(delay + random.uniform(0, delay))
            delay = min(delay * 2, 10.0)

    async def report() -> None:
        while True:
            print(json.dumps({"t": round(time.monotonic(), 2), **state}), flush=True)
            await asyncio.sleep(1)

    await asyncio.gather(report(), *(session(token) for token in tokens))


if __name__ == "__main__":
    if sys.argv[1] == "boxes":
        boxes(sys.argv[2], int(sys.argv[3]), sys.argv[4])
    else:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        asyncio.run(hold(sys.argv[2], json.loads(Path(sys.argv[3]).read_text())))
