"""Faults (``make bench FULL=1`` only): time to full recovery after each fault, and what was lost or stored
twice (must be 0). A whole private stack (tests/faults/stack.py: its own PostgreSQL and Redis from
devservices, the ASGI server, Celery, simulated boxes running the real agent code).

{"bench": "faults", "agents": 50, "pg_restart_recover_s": ..., "redis_restart_recover_s": ...,
 "worker_kill_recover_s": ..., "lost": 0, "duplicated": 0}

- PostgreSQL stopped for 10 s under 50 streaming agents, then started: seconds from the start until
  the backlog the agents buffered meanwhile is acked (at most one sample per agent still in flight);
- Redis stopped for 10 s: seconds from its start until telemetry flows from every box again;
- the Celery worker killed with SIGKILL mid-rollout-phase and mid-notification-delivery
  (tests/faults/worker_kill.py), then started again: seconds from its start until the phase's
  upgrades are all dispatched and the notifications all sent (each exactly once, else it fails).

Quick mode prints the line with ``"skipped": "full mode only"``: the run takes a few minutes.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.faults.stack import Stack, wait_for  # noqa: E402
from tests.faults.worker_kill import worker_kill_run  # noqa: E402


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
        acked, backlog = stack.progress()["acked"], stack.progress()["buffered"]

        def drained() -> bool:  # as tests/faults: the backlog acked, at most one sample per agent in flight
            progress = stack.progress()
            return progress["buffered"] <= args.agents and progress["acked"] > acked + backlog

        wait_for(drained, 300, "drain")
        result["pg_restart_recover_s"] = round(time.monotonic() - started, 2)

        stack.redis_stop()
        time.sleep(10)
        before = {serial: len(seqs) for serial, seqs in stack.stored().items()}
        stack.redis_start()
        started = time.monotonic()
        wait_for(lambda: _acked_per_box_grew(stack, serials, before), 300, "telemetry after Redis", 0.5)
        result["redis_restart_recover_s"] = round(time.monotonic() - started, 2)

        stack.stop_simulator()
        lost, duplicated, total = stack.lost_and_duplicated(serials)

        outcome = worker_kill_run(stack)
        result["worker_kill_recover_s"] = outcome.recover_s
        # a box given two upgrade commands, a notification recorded twice or never, count too
        duplicated += sum(count - 1 for count in outcome.commands_per_box.values() if count > 1)
        lost += sum(1 for count in outcome.commands_per_box.values() if count == 0)
        lost += sum(1 for state, _ in outcome.deliveries.values() if state != "sent")
        duplicated += sum(attempts - 1 for _, attempts in outcome.deliveries.values() if attempts > 1)
        duplicated += len(outcome.received_after_kill) - len(set(outcome.received_after_kill))
        result.update({"acked": total, "lost": lost, "duplicated": duplicated})
    finally:
        stack.down()
        shutil.rmtree(stack.root, ignore_errors=True)
    print(json.dumps(result), flush=True)
    return 0 if result.get("lost") == 0 and result.get("duplicated") == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
