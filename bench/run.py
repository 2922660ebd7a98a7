"""Run every benchmark in bench/ and print one JSON line per benchmark.

Each benchmark is its own script (``bench/<name>.py``) that prints exactly one JSON line starting
with ``{"bench": "<name>"``. Quick mode (default) keeps each under a minute; ``--full`` runs the
sizes the issues name. A benchmark that fails prints ``{"bench": "<name>", "error": ...}`` and the
run goes on; the exit code is non-zero if any failed.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
LOG_DIR = BENCH_DIR.parent / "var" / "bench-logs"
ORDER = [
    "provision",
    "checkin",
    "otb_poll",
    "ingest",
    "sessions",
    "agent",
    "rollout",
    "portal",
    "scaleout",
    "lab",
]


def discover() -> list[str]:
    present = {
        path.stem
        for path in BENCH_DIR.glob("*.py")
        if path.stem not in {"run", "echo", "common", "loadclient"}
    }
    present = {name for name in present if not name.startswith("_")}
    return [name for name in ORDER if name in present] + sorted(present - set(ORDER))


def _kill_group(pgid: int) -> None:
    """SIGTERM the process group, then SIGKILL what is still there a few seconds later."""
    for sig, grace in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 0.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.1)


def run_one(name: str, full: bool, timeout_s: float) -> tuple[bool, str]:
    command = [sys.executable, str(BENCH_DIR / f"{name}.py")] + (["--full"] if full else [])
    started = time.monotonic()
    # Each benchmark runs in a process group of its own, its output goes to files (not pipes), and
    # whatever it leaves behind is killed with the group: a server worker orphaned by a benchmark
    # once held a pipe open, and the runner waited for it until the timeout.
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        process = subprocess.Popen(
            command, stdout=out, stderr=err, text=True, cwd=BENCH_DIR.parent, start_new_session=True
        )
        try:
            returncode = process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            returncode = None
        finally:
            _kill_group(process.pid)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if returncode is None:
        return False, json.dumps({"bench": name, "error": f"timed out after {timeout_s:.0f} s"})
    lines = [line for line in stdout.splitlines() if line.startswith('{"bench"')]
    if returncode != 0 or not lines:
        # The whole output is kept for the post-mortem; the line carries its last lines.
        LOG_DIR.mkdir(parents=True, exist_ok=True)
        log_path = LOG_DIR / f"{name}.log"
        log_path.write_text(f"{stdout}\n--- stderr ---\n{stderr}")
        tail = [line for line in (stderr or stdout).strip().splitlines() if "Warning" not in line][-8:]
        return False, json.dumps(
            {
                "bench": name,
                "error": f"exit {returncode}",
                "tail": tail,
                "log": str(log_path),
                "elapsed_s": round(time.monotonic() - started, 1),
            }
        )
    return True, lines[-1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--full", action="store_true", help="run the full sizes")
    parser.add_argument("names", nargs="*", help="only these benchmarks")
    args = parser.parse_args()
    names = args.names or discover()
    failed = 0
    for name in names:
        ok, line = run_one(name, args.full, timeout_s=1800 if args.full else 170)
        print(line, flush=True)
        failed += not ok
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
