"""Run every benchmark in bench/ and print one JSON line per benchmark.

Each benchmark is its own script (``bench/<name>.py``) that prints exactly one JSON line starting
with ``{"bench": "<name>"``. Quick mode (default) keeps each under a minute; ``--full`` runs the
sizes the issues name. A benchmark that fails prints ``{"bench": "<name>", "error": ...}`` and the
run goes on; the exit code is non-zero if any failed.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
ORDER = ["provision", "checkin", "ingest", "sessions", "agent", "rollout", "portal"]


def discover() -> list[str]:
    present = {
        path.stem
        for path in BENCH_DIR.glob("*.py")
        if path.stem not in {"run", "echo", "common", "loadclient"}
    }
    present = {name for name in present if not name.startswith("_")}
    return [name for name in ORDER if name in present] + sorted(present - set(ORDER))


def run_one(name: str, full: bool, timeout_s: float) -> tuple[bool, str]:
    command = [sys.executable, str(BENCH_DIR / f"{name}.py")] + (["--full"] if full else [])
    started = time.monotonic()
    try:
        completed = subprocess.run(
            command, capture_output=True, text=True, timeout=timeout_s, cwd=BENCH_DIR.parent, check=False
        )
    except subprocess.TimeoutExpired:
        return False, json.dumps({"bench": name, "error": f"timed out after {timeout_s:.0f} s"})
    lines = [line for line in completed.stdout.splitlines() if line.startswith('{"bench"')]
    if completed.returncode != 0 or not lines:
        tail = (completed.stderr or completed.stdout).strip().splitlines()[-5:]
        return False, json.dumps(
            {
                "bench": name,
                "error": f"exit {completed.returncode}",
                "tail": tail,
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
