"""Footprint of one real agent: `otb-agent run --collector simulated` at a 10 s telemetry interval
against a local server for ~30 s (quick) or 120 s (full). Prints one JSON line:
{"bench": "agent", "rss_mib": ..., "cpu_pct": ...} (CPU % of one core, averaged over the run).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ingest import Server, drop_database, fresh_database, log

AGENT = str(Path(sys.executable).with_name("otb-agent"))
SECRET = "bench-factory-secret"


def create_box(database_url: str, serial: str) -> None:
    import os

    os.environ["DATABASE_URL"] = database_url
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    import django

    django.setup()
    from django.db import connection

    from fleet.core.models import Box
    from fleet.core.tokens import box_secret_digest

    Box.objects.create(
        serial=serial, model="OTB-bench", factory_secret_hash=box_secret_digest(serial, SECRET)
    )
    connection.close()


def main() -> int:
    import psutil

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--full", action="store_true")
    parser.add_argument("--duration", type=float)
    args = parser.parse_args()
    duration = args.duration or (120.0 if args.full else 30.0)

    name = "otb_bench_agent"
    database_url = fresh_database(name)
    create_box(database_url, "BENCH-AGENT-1")
    server = Server(database_url)
    server.start()
    state_dir = Path(tempfile.mkdtemp(prefix="otb-bench-agent-"))
    agent = None
    try:
        subprocess.run(
            [AGENT, "enroll", "--server", f"http://127.0.0.1:{server.port}", "--serial", "BENCH-AGENT-1",
             "--secret", SECRET, "--state-dir", str(state_dir)],
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip
        agent = subprocess.Popen(
            [AGENT, "run", "--state-dir", str(state_dir), "--collector", "simulated",
             "--telemetry-interval", "10", "--no-probe", "--log-level", "warning"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        process = psutil.Process(agent.pid)
        time.sleep(3.0)  # start-up (imports, enroll state, first hello) is not the steady state
        cpu_start = process.cpu_times()
        started = time.monotonic()
        peak_rss = 0
        while time.monotonic() - started < duration:
            time.sleep(1.0)
            peak_rss = max(peak_rss, process.memory_info().rss)
        cpu_end = process.cpu_times()
        elapsed = time.monotonic() - started
        cpu_s = (cpu_end.user - cpu_start.user) + (cpu_end.system - cpu_start.system)
        report = {
            "bench": "agent",
            "duration_s": round(elapsed, 1),
            "rss_mib": round(process.memory_info().rss / 2**20, 1),
            "peak_rss_mib": round(peak_rss / 2**20, 1),
            "cpu_pct": round(100 * cpu_s / elapsed, 2),
        }
        log(f"agent: {report}")
    finally:
        if agent is not None and agent.poll() is None:
            agent.terminate()
            try:
                agent.wait(10)
            except subprocess.TimeoutExpired:
                agent.kill()
        server.stop()
        drop_database(name)
        shutil.rmtree(state_dir, ignore_errors=True)
    print(json.dumps(report), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
