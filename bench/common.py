"""What the benchmark scripts share: logging to stderr (stdout carries only the JSON line), a free
loopback port, file-descriptor limits, a fresh database per benchmark, waiting for the server."""

from __future__ import annotations

import os
import resource
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from config.checkout_services import checkout_service_url

ROOT = Path(__file__).resolve().parent.parent


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def base_database_url() -> str:
    """DATABASE_URL; unset, this checkout's embedded PostgreSQL (var/services.env, as the settings)."""
    return os.environ.get("DATABASE_URL") or checkout_service_url(
        "DATABASE_URL", Path(os.environ.get("OTB_VAR_DIR") or ROOT / "var")
    )


def raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 1_048_576
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError):
        log(f"could not raise RLIMIT_NOFILE above {soft}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] if ordered else 0.0


def bench_database_url(base: str, name: str) -> tuple[str, str]:
    """(URL of database ``name``, maintenance URL) on the server of ``base``."""
    parts = urlsplit(base)
    return urlunsplit(parts._replace(path=f"/{name}")), urlunsplit(parts._replace(path="/postgres"))


def recreate_database(maintenance_url: str, name: str) -> None:
    import psycopg

    with psycopg.connect(maintenance_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')


def uvicorn_start(
    port: int, workers: int, env: dict[str, str], app: str = "config.asgi:application"
) -> subprocess.Popen:
    """The benchmarks' ASGI server: ``workers`` uvicorn processes on 127.0.0.1:``port``, quiet, in
    their own session (stop them with a signal to the process group)."""
    command = [
        sys.executable, "-m", "uvicorn", app, "--host", "127.0.0.1", "--port", str(port),
        "--workers", str(workers), "--no-access-log", "--log-level", "warning",
        "--http", "otbcompat.http:OtbHttpToolsProtocol",  # as in production (deploy/systemd)
    ]  # fmt: skip
    return subprocess.Popen(
        command, cwd=Path(__file__).resolve().parent.parent, env=env, start_new_session=True
    )


def wait_healthy(base_url: str, process: subprocess.Popen, timeout_s: float = 60) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"uvicorn exited with {process.returncode}")
        try:
            if httpx.get(f"{base_url}/healthz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError("uvicorn did not become healthy")


def _process_cpu_s(pid: int) -> tuple[str, int, float]:
    """(command name, process group, user+system CPU seconds) of one process from /proc."""
    with open(f"/proc/{pid}/stat") as handle:
        raw = handle.read()
    name = raw[raw.index("(") + 1 : raw.rindex(")")]
    fields = raw[raw.rindex(")") + 2 :].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return name, int(fields[2]), (int(fields[11]) + int(fields[12])) / ticks


def cpu_snapshot(server_pgid: int | set[int], *, nginx: bool = False) -> dict[str, dict[int, float]]:
    """CPU seconds used so far by each process of the server's process group, PostgreSQL, Redis and
    this process (with the load generators it reaped), by component and pid. Two snapshots given to
    :func:`cpu_ms_per` tell where a benchmark's CPU went (the machine has two cores, so the split
    tells which part to make cheaper)."""
    server_pgids = server_pgid if isinstance(server_pgid, set) else {server_pgid}
    totals: dict[str, dict[int, float]] = {"server": {}, "postgres": {}, "redis": {}}
    if nginx:
        totals["nginx"] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            name, pgid, cpu = _process_cpu_s(int(entry))
        except (OSError, ValueError, IndexError):
            continue
        if pgid in server_pgids:
            totals["server"][int(entry)] = cpu
        elif nginx and name == "nginx":
            totals["nginx"][int(entry)] = cpu
        elif name == "postgres":
            totals["postgres"][int(entry)] = cpu
        elif name.startswith("redis-server"):
            totals["redis"][int(entry)] = cpu
    # this process and the load-generator processes it has reaped (the server is never reaped
    # before the last snapshot)
    totals["client"] = {
        0: sum(
            usage.ru_utime + usage.ru_stime
            for usage in (
                resource.getrusage(resource.RUSAGE_SELF),
                resource.getrusage(resource.RUSAGE_CHILDREN),
            )
        )
    }
    return totals


def cpu_ms_per(
    before: dict[str, dict[int, float]],
    after: dict[str, dict[int, float]],
    count: int,
    *,
    unit_s: float = 1e-3,
) -> dict[str, float]:
    """CPU per unit of work (``count`` units) for each part between two snapshots, in milliseconds
    (or in ``unit_s`` seconds: 1e-6 for microseconds). A process that started in between counts
    whole; one that exited in between is left out (PostgreSQL backends of closed connections)."""
    return {
        key: round(
            sum(cpu - before[key].get(pid, 0.0) for pid, cpu in after[key].items()) / unit_s / max(count, 1),
            2,
        )
        for key in before
    }
