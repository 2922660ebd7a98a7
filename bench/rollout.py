"""Rollout benchmark.

1. ``create``: a rollout targeting N claimed boxes (quick 10,000, ``--full`` 100,000) is created with
   ``rollout_create`` (target evaluation, phase assignment, upgrade rows written with COPY): seconds
   and queries (Django's captured queries plus the one COPY, which bypasses the query log).
2. ``dispatch``: 2,000 simulated agents (``otb-agent simulate --credentials-file``) hold real
   websocket sessions on uvicorn (2 workers); a one-phase rollout of a release to them is started and
   the engine ticked in this process every 0.5 s: ``dispatch_per_s`` is commands delivered to agents
   per second (command rows leaving ``pending``), ``phase_s`` the time until the phase (and the
   rollout) completed: every box downloaded (simulated), rebooted, came back on the new version and
   sent healthy telemetry. If the live part cannot run, ``dispatch_mode`` says ``service`` and the
   figure is the engine's own dispatch rate (commands written per second, no agents).

Uses its own database ``otb_bench_rollout`` next to ``DATABASE_URL``. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from common import base_database_url, free_port, log, raise_nofile

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
BENCH_DB = "otb_bench_rollout"
LIVE_AGENTS = 2000
SIM_VERSION = "23.05.3-otb.1"  # what the simulated collector reports before an upgrade


def fresh_database() -> str:
    import psycopg

    parts = urlsplit(base_database_url())
    with psycopg.connect(urlunsplit(parts._replace(path="/postgres")), autocommit=True) as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = %s AND pid <> pg_backend_pid()",
            [BENCH_DB],
        )
        conn.execute(f'DROP DATABASE IF EXISTS "{BENCH_DB}"')
        conn.execute(f'CREATE DATABASE "{BENCH_DB}"')
    url = urlunsplit(parts._replace(path=f"/{BENCH_DB}"))
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "-v0"],
        cwd=ROOT,
        env={**os.environ, "DATABASE_URL": url},
        check=True,
    )
    return url


def setup_django(database_url: str) -> None:
    os.environ["DATABASE_URL"] = database_url
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    import django

    django.setup()


def seed_fleet(count: int, *, tag: str, version: str, organization: Any) -> list[Any]:
    from fleet.core.choices import BoxState
    from fleet.core.models import Box

    prefix = tag.upper()
    boxes = [
        Box(
            serial=f"{prefix}-{i:07d}",
            model="OTB-v2c",
            state=BoxState.CLAIMED,
            organization=organization,
            firmware_version=version,
            tags=[tag],
        )
        for i in range(count)
    ]
    Box.objects.bulk_create(boxes, batch_size=5000)
    return boxes


def make_release(version: str) -> Any:
    import hashlib

    from fleet.core.audit import Actor
    from fleet.firmware.services import release_create, release_publish

    actor = Actor.system("bench")
    image = f"bench image {version}".encode()
    release = release_create(
        actor=actor,
        version=version,
        hardware_models=["OTB-v2c", "OTB-v2b", "OTB-Plus"],
        external_url=f"https://images.example.net/{version}.img",
        size=len(image),
        sha256=hashlib.sha256(image).hexdigest(),
        signature="A" * 86 + "==",
    )
    return release_publish(actor=actor, release=release)


def bench_create(count: int) -> dict[str, Any]:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from fleet.core.audit import Actor
    from fleet.core.models import Organization
    from fleet.firmware.services import rollout_create

    organization = Organization.objects.create(name="Bench fleet", slug="bench-fleet")
    started = time.monotonic()
    seed_fleet(count, tag="fleet", version="1.0.0", organization=organization)
    log(f"seeded {count} boxes in {time.monotonic() - started:.1f} s")
    release = make_release("2.0.0")
    with CaptureQueriesContext(connection) as queries:
        started = time.monotonic()
        rollout = rollout_create(
            actor=Actor.system("bench"),
            release=release,
            name="bench create",
            target={"tags": ["fleet"]},
            phases=[1, 10, 50, 100],
        )
        create_s = time.monotonic() - started
    assert rollout.upgrades.count() == count, "every targeted box has an upgrade row"
    return {"create_s": round(create_s, 3), "create_queries": len(queries.captured_queries) + 1}


class Uvicorn:
    def __init__(self, database_url: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {
            **os.environ,
            "DATABASE_URL": database_url,
            "OTB_ENV": "development",
            "DEBUG": "0",
            "LOG_LEVEL": "WARNING",
            "OTB_PROCESS_NAME": "bench-rollout-server",
            "OTB_TELEMETRY_INTERVAL_S": "5",
        }
        command = [
            sys.executable, "-m", "uvicorn", "config.asgi:application", "--host", "127.0.0.1",
            "--port", str(self.port), "--workers", "2", "--ws-max-size", "65536", "--log-level", "warning",
            "--no-access-log", "--backlog", "16384",
        ]  # fmt: skip
        # its own process group: stop() signals the supervisor AND its workers (a worker left behind
        # held the runner's pipe open until the runner's timeout)
        self.process = subprocess.Popen(
            command, cwd=ROOT, env=env, preexec_fn=raise_nofile, start_new_session=True
        )
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{self.url}/healthz", timeout=1) as response:
                    if response.status == 200:
                        return
            except OSError:
                time.sleep(0.3)
        raise RuntimeError("uvicorn did not start")

    def stop(self) -> None:
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            pass
        except ProcessLookupError:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()


def bench_dispatch(
    database_url: str, workdir: Path, agent_count: int = LIVE_AGENTS, phase_timeout_s: float = 240
) -> dict[str, Any]:
    """2,000 live simulated agents; returns dispatch_per_s and phase_s (or raises)."""
    from django.db.models import Count

    from fleet.commands.models import Command
    from fleet.core.audit import Actor
    from fleet.core.models import AgentCredential, Organization
    from fleet.core.tokens import TokenKind, token_issue
    from fleet.firmware.choices import RolloutState
    from fleet.firmware.engine import rollouts_tick
    from fleet.firmware.services import rollout_create, rollout_start
    from fleet.telemetry.models import BoxStatus

    organization = Organization.objects.create(name="Bench live", slug="bench-live", timezone="UTC")
    boxes = seed_fleet(agent_count, tag="live", version=SIM_VERSION, organization=organization)
    credentials_file = workdir / "credentials.jsonl"
    credentials = []
    with credentials_file.open("w") as handle:
        for box in boxes:
            issued = token_issue(TokenKind.AGENT)
            credentials.append(AgentCredential(box=box, token_hash=issued.digest))
            handle.write(json.dumps({"serial": box.serial, "agent_token": issued.value}) + "\n")
    AgentCredential.objects.bulk_create(credentials, batch_size=2000)
    release = make_release("24.10.0-otb.1")
    server = Uvicorn(database_url)
    sim_log = Path(os.environ.get("OTB_BENCH_SIM_LOG", str(workdir / "simulate.log")))
    agents = None
    try:
        agents = subprocess.Popen(
            [
                str(Path(sys.executable).with_name("otb-agent")),
                "simulate",
                "--server",
                server.url,
                "--credentials-file",
                str(credentials_file),
                "--memory-buffer",
                "--no-config",
                "--interval",
                "3",
                "--reboot-delay",
                "1",
                "--ramp",
                "5",
                "--progress-interval",
                "30",
                "--state-dir",
                str(workdir / "sim"),
            ],
            cwd=ROOT,
            stdout=sim_log.open("w"),
            stderr=subprocess.STDOUT,
            preexec_fn=raise_nofile,
        )
        deadline = time.monotonic() + 300
        online = 0
        while time.monotonic() < deadline:
            online = BoxStatus.objects.filter(online=True, box__tags__contains=["live"]).count()
            if online >= agent_count:
                break
            time.sleep(1)
        log(f"{online} agents online")
        if online < agent_count:
            tail = sim_log.read_text().strip().splitlines()[-1:] if sim_log.exists() else []
            raise RuntimeError(f"only {online} of {agent_count} agents connected; simulator: {tail}")
        rollout = rollout_create(
            actor=Actor.system("bench"),
            release=release,
            name="bench dispatch",
            target={"tags": ["live"]},
            phases=[100],
            soak_s=0,
            max_in_flight=agent_count,
            force=True,
            health_window_s=300,
        )
        rollout_start(actor=Actor.system("bench"), rollout=rollout)
        started = time.monotonic()
        delivered_at = None
        deadline = started + phase_timeout_s
        while time.monotonic() < deadline:
            rollouts_tick()
            if delivered_at is None:
                delivered = Command.objects.filter(kind="firmware_upgrade").exclude(state="pending").count()
                if delivered >= agent_count:
                    delivered_at = time.monotonic()
            rollout.refresh_from_db()
            if rollout.state == RolloutState.COMPLETED:
                break
            time.sleep(0.5)
        if delivered_at is None or rollout.state != RolloutState.COMPLETED:
            counts = dict(rollout.upgrades.values_list("state").annotate(n=Count("pk")).order_by())
            raise RuntimeError(f"rollout did not complete in {phase_timeout_s:.0f} s: {counts}")
        return {
            "dispatch_per_s": round(agent_count / max(delivered_at - started, 1e-6), 1),
            "phase_s": round(time.monotonic() - started, 2),
            "agents": agent_count,
            "dispatch_mode": "live",
        }
    finally:
        if agents is not None and agents.poll() is None:
            agents.send_signal(signal.SIGINT)
            try:
                agents.wait(20)
            except subprocess.TimeoutExpired:
                agents.kill()
        server.stop()


def bench_dispatch_service() -> dict[str, Any]:
    """Fallback: the engine's dispatch rate with 2,000 online boxes and no agents."""
    from django.utils import timezone

    from fleet.core.audit import Actor
    from fleet.core.models import Organization
    from fleet.firmware.engine import rollouts_tick
    from fleet.firmware.services import rollout_create, rollout_start
    from fleet.telemetry.models import BoxStatus

    organization = Organization.objects.create(name="Bench svc", slug="bench-svc", timezone="UTC")
    boxes = seed_fleet(LIVE_AGENTS, tag="svc", version="1.0.0", organization=organization)
    BoxStatus.objects.bulk_create(
        [BoxStatus(box=b, online=True, connected_at=timezone.now(), boot_id="b") for b in boxes],
        batch_size=2000,
    )
    rollout = rollout_create(
        actor=Actor.system("bench"),
        release=make_release("3.0.0"),
        name="svc",
        target={"tags": ["svc"]},
        phases=[100],
        max_in_flight=LIVE_AGENTS,
        force=True,
    )
    rollout_start(actor=Actor.system("bench"), rollout=rollout)
    started = time.monotonic()
    summary = rollouts_tick()
    elapsed = time.monotonic() - started
    return {
        "dispatch_per_s": round(summary.dispatched / elapsed, 1),
        "phase_s": None,
        "dispatch_mode": "service",
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--full", action="store_true")
    parser.add_argument("--boxes", type=int)
    parser.add_argument("--no-live", action="store_true", help="skip the live agents part")
    parser.add_argument(
        "--agents",
        type=int,
        help="live simulated agents (2,000 with --full; 500 in quick mode to stay under a minute)",
    )
    args = parser.parse_args()
    count = args.boxes or (100_000 if args.full else 10_000)
    raise_nofile()
    database_url = fresh_database()
    setup_django(database_url)
    result: dict[str, Any] = {"bench": "rollout", "boxes": count}
    result.update(bench_create(count))
    log(f"create: {result}")
    dispatch: dict[str, Any]
    if args.no_live:
        dispatch = bench_dispatch_service()
    else:
        with tempfile.TemporaryDirectory(prefix="otb-bench-rollout-") as workdir:
            try:
                dispatch = bench_dispatch(
                    database_url,
                    Path(workdir),
                    args.agents or (LIVE_AGENTS if args.full else 500),
                    phase_timeout_s=240 if args.full else 60,
                )
            except Exception as exc:  # report the service-level figure, and say why
                log(f"live dispatch failed: {exc!r}")
                dispatch = {**bench_dispatch_service(), "live_error": str(exc)[:300]}
    result.update(dispatch)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
