"""Faults (``make bench FULL=1`` only): time to full recovery after each fault, and what was lost or stored
twice (must be 0). A whole private stack (tests/faults/stack.py: its own PostgreSQL and Redis from
devservices, the ASGI server, Celery, simulated boxes running the real agent code).

{"bench": "faults", "agents": 50, "pg_restart_recover_s": ..., "redis_restart_recover_s": ...,
 "worker_kill_recover_s": ..., "lost": 0, "duplicated": 0}

- PostgreSQL stopped for 10 s under 50 streaming agents, then started: seconds from the start until
  every agent's buffer is drained;
- Redis stopped for 10 s: seconds from its start until telemetry flows from every box again;
- the Celery worker killed with SIGKILL and started again: seconds until it has run a task again
  (a command expiry sweep queued by hand).

Quick mode prints the line with ``"skipped": "full mode only"``: the run takes a few minutes.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.faults.stack import Stack, wait_for  # noqa: E402


def _acked_per_box_grew(stack: Stack, serials: list[str], before: dict[str, int]) -> bool:
    stored = stack.stored()
    return all(len(stored.get(serial, [])) > before.get(serial, 0) for serial in serials)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--full", action="store_true")
    parser.add_argument("--agents", type=int, default=50)
    args = parser.parse_args()
    if not args.full:
        print(json.dumps({"bench": "faults", "skipped": "full mode only (make bench FULL=1)"}))
        return 0
    stack = Stack(Path(tempfile.mkdtemp(prefix="otb-faults-")))
    result: dict[str, object] = {"bench": "faults", "agents": args.agents}
    try:
        stack.up()
        rows = stack.import_boxes(args.agents, "FLT")
        serials = [row["serial"] for row in rows]
        stack.simulate(stack.root / "FLT.csv", interval=0.5)
        wait_for(lambda: stack.progress().get("sessions", 0) >= args.agents, 120, "sessions")
        time.sleep(3)

        stack.postgres_stop()
        time.sleep(10)
        stack.postgres_start()
        started = time.monotonic()
        acked = stack.progress()["acked"]
        wait_for(
            lambda: stack.progress()["buffered"] == 0 and stack.progress()["acked"] > acked, 300, "drain"
        )
        result["pg_restart_recover_s"] = round(time.monotonic() - started, 2)

        stack.redis_stop()
        time.sleep(10)
        before = {serial: len(seqs) for serial, seqs in stack.stored().items()}
        stack.redis_start()
        started = time.monotonic()
        wait_for(lambda: _acked_per_box_grew(stack, serials, before), 300, "telemetry after Redis", 0.5)
        result["redis_restart_recover_s"] = round(time.monotonic() - started, 2)

        stack.kill("worker", signal.SIGKILL)
        stack.worker_start(loglevel="INFO")
        started = time.monotonic()
        subprocess.run(
            [
                sys.executable,
                "-c",
                "import django; django.setup(); "
                "from fleet.commands.tasks import commands_expire_task as t; t.delay()",
            ],
            cwd=ROOT,
            env={**stack.env, "DJANGO_SETTINGS_MODULE": "config.settings"},
            check=True,
        )
        log = stack.root / "logs" / "worker.log"
        wait_for(
            lambda: (
                "commands_expire_task" in log.read_text(errors="replace")
                and "succeeded" in log.read_text(errors="replace")
            ),
            120,
            "the restarted worker to run a task",
        )
        result["worker_kill_recover_s"] = round(time.monotonic() - started, 2)

        stack.stop_simulator()
        lost, duplicated, total = stack.lost_and_duplicated(serials)
        result.update({"acked": total, "lost": lost, "duplicated": duplicated})
    finally:
        stack.down()
    print(json.dumps(result), flush=True)
    return 0 if result.get("lost") == 0 and result.get("duplicated") == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
