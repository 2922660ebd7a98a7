"""A Celery worker killed with SIGKILL mid-rollout-phase and mid-notification-delivery, on the fault
stack (tests/faults/stack.py); shared by tests/faults/test_faults.py and bench/faults.py.

The moment is made, not guessed: a webhook receiver holds the first notification request it gets
without answering, and the test holds the commands table (``LOCK TABLE ... IN SHARE MODE``), so the
worker's dispatch of the phase waits inside its transaction on the INSERT of the
``firmware_upgrade`` commands (seen in ``pg_stat_activity``). With the worker's two processes stuck
there and the other deliveries queued behind them, the worker's process group gets
SIGKILL, the holds are let go and a new worker starts. Afterwards PostgreSQL must show every box of
the phase with exactly one upgrade command and every delivery sent once (one recorded attempt), and
the receiver must have got each notification once after the kill: the one cut off mid-request
again, with the same ``delivery_id``, the others exactly once."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import psycopg

from tests.faults.stack import ROOT, Stack, wait_for

PREPARE = """
import django, json, sys; django.setup()
from fleet.core.audit import Actor
from fleet.core.models import Box
from fleet.core.services.organizations import organization_create
from fleet.firmware.services import release_create, release_publish, rollout_create
from fleet.monitoring.services import alert_rule_create, notification_target_create
args = json.loads(sys.argv[1])
system = Actor.system("faults")
run = args["run"]
org = organization_create(actor=system, name=f"Worker kill {run}", owner_email=f"o{run}@wk.test")
Box.objects.filter(serial__in=args["rollout"]).update(state="claimed", organization=org)
alerted = organization_create(actor=system, name=f"Worker kill alerts {run}", owner_email=f"a{run}@wk.test")
Box.objects.filter(serial__in=args["alert"]).update(state="claimed", organization=alerted)
release = release_create(
    actor=system, version=f"99.{run}.0", hardware_models=["OTB-SIM"], size=1024, sha256="0" * 64,
    signature="AQ" * 42 + "AQ==", external_url="https://firmware.invalid/otb.bin",
)
release = release_publish(actor=system, release=release)
rollout = rollout_create(
    actor=system, release=release, name="worker kill", target={"boxes": args["rollout"]}, phases=[100],
    force=True,  # whatever the maintenance window
)
target, _ = notification_target_create(
    actor=system, organization=alerted, name="hook", kind="webhook", url=args["hook"]
)
rule = alert_rule_create(
    actor=system, organization=alerted, name="offline", kind="box_offline", duration_minutes=1,
    target_ids=[target.pk],
)
print(json.dumps({"organization": str(org.pk), "rollout": str(rollout.pk), "rule": str(rule.pk)}))
"""

START = """
import django, sys; django.setup()
from fleet.core.audit import Actor
from fleet.firmware.models import Rollout
from fleet.firmware.services import rollout_start
rollout_start(actor=Actor.system("faults"), rollout=Rollout.objects.get(pk=sys.argv[1]))
"""

FIRE = """
import django, json, sys; django.setup()
from datetime import timedelta
from django.utils import timezone
from fleet.core.models import Box
from fleet.monitoring.services import alert_rule_evaluate
from fleet.telemetry.models import BoxStatus
args = json.loads(sys.argv[1])
since = timezone.now() - timedelta(minutes=10)
for box in Box.objects.filter(serial__in=args["alert"]):
    BoxStatus.objects.update_or_create(box=box, defaults={"online": False, "offline_since": since})
alert_rule_evaluate(rule_id=args["rule"])
"""


@dataclass
class HoldingReceiver:
    """A customer's webhook endpoint (outside the system, so a test double): answers 200, except
    that it holds the first request it gets, unanswered, until ``release``."""

    requests: list[tuple[float, str]] = field(default_factory=list)  # (monotonic time, delivery_id)
    held: threading.Event = field(default_factory=threading.Event)
    released: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                receiver.requests.append((time.monotonic(), str(json.loads(body)["delivery_id"])))
                if not receiver.held.is_set():
                    receiver.held.set()
                    receiver.released.wait(120)
                try:
                    self.send_response(200)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                except OSError:  # the sender is gone
                    pass

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.released.set()
        self.server.shutdown()
        self.server.server_close()


@dataclass
class WorkerKillOutcome:
    recover_s: float
    commands_per_box: dict[str, int]  # firmware_upgrade commands per box of the phase
    upgrades_sent: int  # upgrades of the rollout holding a command
    upgrade_commands: int  # distinct commands those upgrades hold
    deliveries: dict[str, tuple[str, int]]  # delivery id -> (state, attempts)
    received_before_kill: list[str]  # delivery ids the receiver got before the kill
    received_after_kill: list[str]  # and after it
    dispatched_before_restart: int  # firmware commands that existed when the new worker started
    pending_before_restart: int  # deliveries still pending then


def _django(stack: Stack, script: str, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", script, *args],
        cwd=ROOT,
        env={**stack.env, "DJANGO_SETTINGS_MODULE": "config.settings"},
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""


def _scalar(conn: psycopg.Connection, sql: str, *params: Any) -> Any:
    row = conn.execute(sql, list(params)).fetchone()
    assert row is not None, sql
    return row[0]


def worker_kill_run(stack: Stack, *, rollout_boxes: int = 6, alert_boxes: int = 4) -> WorkerKillOutcome:
    """The scenario (module docstring); the stack is up, without a simulator running."""
    run = random.randint(1000, 9999)  # names of this run's organisation, release and boxes
    rollout_serials = [row["serial"] for row in stack.import_boxes(rollout_boxes, f"WKR{run}")]
    alert_serials = [row["serial"] for row in stack.import_boxes(alert_boxes, f"WKA{run}")]
    stack.simulate(stack.root / f"WKR{run}.csv", interval=0.5)
    wait_for(lambda: stack.progress().get("sessions", 0) >= rollout_boxes, 60, "the rollout's boxes online")
    receiver = HoldingReceiver()
    try:
        ids = json.loads(
            _django(
                stack,
                PREPARE,
                json.dumps(
                    {"rollout": rollout_serials, "alert": alert_serials, "hook": receiver.url, "run": run}
                ),
            )
        )
        with psycopg.connect(stack.database_url) as lock, psycopg.connect(stack.database_url) as conn:
            conn.autocommit = True
            # the first alert fires: one of the worker's two processes sends it, held unanswered
            _django(stack, FIRE, json.dumps({"alert": alert_serials[:1], "rule": ids["rule"]}))
            wait_for(receiver.held.is_set, 60, "the worker to send the first notification")
            # the commands table held (reads go on): the other process's dispatch of the phase waits on
            # its INSERT of the upgrade commands, mid-transaction (foreign keys are only checked at
            # commit, so a table lock is what stops it there)
            lock.execute("LOCK TABLE commands_command IN SHARE MODE")
            _django(stack, START, ids["rollout"])
            wait_for(
                lambda: _scalar(
                    conn,
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                    " AND query LIKE 'INSERT INTO \"commands_command\"%%'",
                ),
                60,
                "the worker to dispatch the phase (and wait on the held table)",
            )
            # the other alerts fire: their deliveries wait in the queue, the worker being busy
            _django(stack, FIRE, json.dumps({"alert": alert_serials, "rule": ids["rule"]}))
            delivery_ids = [  # also fired by the beat's evaluation, if it came first
                str(row[0])
                for row in conn.execute(
                    "SELECT d.id FROM monitoring_notificationdelivery d"
                    " JOIN monitoring_alert a ON a.id = d.alert_id WHERE a.rule_id = %s",
                    [ids["rule"]],
                ).fetchall()
            ]
            assert len(delivery_ids) == alert_boxes, delivery_ids

            stack.kill("worker", signal.SIGKILL)  # the worker's process group: the worker and its pool
            killed = time.monotonic()
            receiver.released.set()
            lock.rollback()
            # the killed transactions end (their locks with them) once PostgreSQL sees the clients gone
            wait_for(
                lambda: (
                    not _scalar(
                        conn,
                        "SELECT count(*) FROM pg_stat_activity WHERE state <> 'idle'"
                        " AND query LIKE 'INSERT INTO \"commands_command\"%%'",
                    )
                ),
                30,
                "the killed dispatch to roll back",
            )
            dispatched_before = _scalar(
                conn,
                "SELECT count(*) FROM commands_command c JOIN fleet_box b ON b.id = c.box_id"
                " WHERE b.serial = ANY(%s) AND c.kind = 'firmware_upgrade'",
                rollout_serials,
            )
            pending_before = _scalar(
                conn,
                "SELECT count(*) FROM monitoring_notificationdelivery WHERE id = ANY(%s::uuid[])"
                " AND state = 'pending'",
                delivery_ids,
            )

            stack.worker_start()
            started = time.monotonic()

            def recovered() -> bool:
                sent = _scalar(
                    conn,
                    "SELECT count(*) FROM firmware_upgrade WHERE rollout_id = %s AND command_id IS NOT NULL",
                    ids["rollout"],
                )
                delivered = _scalar(
                    conn,
                    "SELECT count(*) FROM monitoring_notificationdelivery WHERE id = ANY(%s::uuid[])"
                    " AND state = 'sent'",
                    delivery_ids,
                )
                return bool(sent == rollout_boxes and delivered == alert_boxes)

            wait_for(recovered, 120, "the new worker to finish the phase's dispatch and the deliveries")
            recover_s = time.monotonic() - started
            time.sleep(8)  # a few more rollout ticks and sweeps: nothing may be sent again

            per_box: dict[str, int] = dict(
                conn.execute(
                    "SELECT b.serial, count(c.id) FROM fleet_box b LEFT JOIN commands_command c"
                    " ON c.box_id = b.id AND c.kind = 'firmware_upgrade' WHERE b.serial = ANY(%s) GROUP BY 1",
                    [rollout_serials],
                ).fetchall()
            )
            upgrades_sent, upgrade_commands = conn.execute(
                "SELECT count(command_id), count(DISTINCT command_id) FROM firmware_upgrade"
                " WHERE rollout_id = %s",
                [ids["rollout"]],
            ).fetchone() or (0, 0)
            deliveries = {
                str(row[0]): (row[1], row[2])
                for row in conn.execute(
                    "SELECT id, state, attempts FROM monitoring_notificationdelivery"
                    " WHERE id = ANY(%s::uuid[])",
                    [delivery_ids],
                ).fetchall()
            }
    finally:
        receiver.close()
        stack.stop_simulator()
    return WorkerKillOutcome(
        recover_s=round(recover_s, 2),
        commands_per_box={str(serial): int(count) for serial, count in per_box.items()},
        upgrades_sent=int(upgrades_sent),
        upgrade_commands=int(upgrade_commands),
        deliveries=deliveries,
        received_before_kill=[delivery for at, delivery in receiver.requests if at < killed],
        received_after_kill=[delivery for at, delivery in receiver.requests if at >= killed],
        dispatched_before_restart=int(dispatched_before),
        pending_before_restart=int(pending_before),
    )
