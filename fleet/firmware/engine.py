"""The rollout engine, run by the periodic ``rollouts`` task (and kicked after a start or resume).

One tick: (1) follow every upgrade in flight from its command row and the box's live status
(success only once the box is back, on the new version, tunnel up and a WAN up, within the health
window), timing out stuck ones; (2) for each active rollout, under its row lock taken with SKIP
LOCKED (two ticks at once never work on the same rollout), evaluate the failure policy, schedule
waiting boxes that are online, dispatch within the in-flight limit and the maintenance windows, and
open the next phase once the current one has settled and soaked. Everything is idempotent: a tick
that runs twice, or dies half way, leaves rows another tick can pick up.
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from dataclasses import dataclass, field
from typing import Any

from django.db import connection, transaction
from django.utils import timezone

from fleet.commands.choices import CommandState
from fleet.commands.models import Command
from fleet.core.audit import Actor, audit_record
from fleet.core.choices import BoxProtocol
from fleet.core.models import Box, Organization
from fleet.firmware.choices import (
    FAILURE_STATES,
    IN_FLIGHT_STATES,
    TICKED_ROLLOUT_STATES,
    ReleaseState,
    RolloutState,
    SkipReason,
    UpgradeState,
)
from fleet.firmware.delivery import doorbells_ring, firmware_commands_create_bulk
from fleet.firmware.models import BoxUpgradePolicy, Release, Rollout, Upgrade
from fleet.firmware.selectors import rollout_state_counts
from fleet.firmware.transitions import IllegalTransition, sources_of, upgrade_transition
from fleet.firmware.windows import window_sql
from fleet.telemetry.models import BoxStatus

logger = logging.getLogger(__name__)
U = UpgradeState
SYSTEM = Actor.system("rollout")
SYNC_BATCH = 1000
REDELIVER_AFTER_S = 15
STAGE_BY_WORD = {
    "downloading": U.DOWNLOADING,
    "verifying": U.VERIFYING,
    "installing": U.INSTALLING,
    "rebooting": U.REBOOTING,
}


@dataclass
class TickSummary:
    synced: int = 0
    finished: dict[str, int] = field(default_factory=dict)
    dispatched: int = 0
    rollouts: int = 0
    paused: list[str] = field(default_factory=list)
    phases_opened: int = 0
    completed: int = 0

    def as_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


# --- following upgrades in flight -----------------------------------------------------------------


def _healthy(status: dict[str, Any]) -> bool:
    return (
        bool(status.get("online")) and status.get("tunnel_up") is True and (status.get("wans_up") or 0) >= 1
    )


def _unhealthy_why(status: dict[str, Any]) -> str:
    why = []
    if status.get("tunnel_up") is not True:
        why.append("tunnel down")
    if (status.get("wans_up") or 0) < 1:
        why.append("no WAN up")
    if not status.get("online"):
        why.append("offline")
    return ", ".join(why) or "unhealthy"


def _came_back(upgrade: Upgrade, status: dict[str, Any] | None, reference: dt.datetime | None) -> bool:
    """Whether the box has rebooted (new boot id) or reconnected since ``reference``."""
    if not status or not status.get("online"):
        return False
    boot_id = status.get("boot_id") or ""
    if upgrade.boot_id_at_send and boot_id:
        return boot_id != upgrade.boot_id_at_send
    connected_at = status.get("connected_at")
    return bool(connected_at and reference and connected_at > reference)


def otb_version_matches(running: str, version: str) -> bool:
    """A stock OverTheBox box runs ``version``: its reported version is it (``v`` aside), or is the
    5-character cut ``X-Overthebox-Version`` carries (``git describe | cut -c 2-6``) of it, perhaps
    without its trailing dot (``1.10.`` or ``1.10`` for ``1.10.2``)."""
    running, version = running.strip().lstrip("vV"), version.strip().lstrip("vV")
    if not running:
        return False
    return running == version or (4 <= len(running) <= 5 and version.startswith(running))


def _otb_evaluate(
    upgrade: Upgrade, *, version: str, command: dict[str, Any] | None, status: dict[str, Any]
) -> tuple[str, str] | None:
    """A stock OverTheBox box's upgrade judged by the version it reports, never by its ``done`` alone:
    succeeded once it is seen (polling) after the command went out, on the new version; failed when it
    is seen on another version after reporting ``done`` (it came back on the old image). None: the
    command's state decides (an ``error`` fails it; a ``done`` reported later is kept on the command
    without changing it: a failed sysupgrade is reported ``done`` after the next start)."""
    if not status.get("online"):
        return None
    seen = status.get("last_seen_at")
    running = str(status.get("firmware_version") or "")
    finished_at = command.get("finished_at") if command else None
    if seen and upgrade.sent_at and seen > upgrade.sent_at and otb_version_matches(running, version):
        return U.SUCCEEDED, ""
    if (
        command
        and command["state"] == CommandState.SUCCEEDED
        and seen
        and finished_at
        and seen > finished_at
        and running
        and not otb_version_matches(running, version)
    ):
        return U.FAILED, f"the box came back on {running}, not {version}"
    return None


def upgrade_evaluate(
    upgrade: Upgrade,
    *,
    version: str,
    command: dict[str, Any] | None,
    status: dict[str, Any] | None,
    health_window_s: int,
    timeout_s: int,
    now: dt.datetime,
) -> tuple[str, str | None, int]:
    """Decide where an in-flight upgrade stands: ``(state, reason or None, progress)``.

    Reads the command row and the box status given and writes nothing, except that it notes on the
    (unsaved) upgrade the telemetry watermark when the box is first seen back (``seq_at_return``):
    only telemetry newer than that proves the box healthy on its new firmware.
    """
    progress = upgrade.progress
    state = upgrade.state
    if status and status.get("box__protocol") == BoxProtocol.OTB:
        judged = _otb_evaluate(upgrade, version=version, command=command, status=status)
        if judged is not None:
            return judged[0], judged[1], 100 if judged[0] == U.SUCCEEDED else progress
        if command and command["state"] == CommandState.SUCCEEDED:
            # done, not seen back on the new version yet: wait (up to the health window)
            deadline = (command.get("finished_at") or now) + dt.timedelta(seconds=health_window_s)
            if now >= deadline:
                return (
                    U.TIMED_OUT,
                    f"the box did not come back on {version} within {health_window_s} s",
                    progress,
                )
            return U.REBOOTING, None, 100
    finished_at = command.get("finished_at") if command else None
    reference = finished_at or upgrade.rebooting_at or upgrade.sent_at
    if _came_back(upgrade, status, reference):
        assert status is not None
        running = status.get("firmware_version") or ""
        if running != version:
            if command and command["state"] == CommandState.FAILED:
                return U.FAILED, command.get("error") or "the box reported a failure", progress
            return (
                U.FAILED,
                f"the box came back on {running or 'an unknown version'}, not {version}",
                progress,
            )
        last_seq = status.get("last_seq") or 0
        if upgrade.seq_at_return is None:
            upgrade.seq_at_return = last_seq  # health counts from the next telemetry on
        fresh = last_seq > upgrade.seq_at_return
        if fresh and _healthy(status):
            return U.SUCCEEDED, "", 100
        health_deadline = (finished_at or upgrade.rebooting_at or now) + dt.timedelta(seconds=health_window_s)
        if now >= health_deadline:
            why = _unhealthy_why(status) if fresh else "no telemetry since it came back"
            return U.FAILED, f"back on {version} but unhealthy: {why}", progress
        return U.REBOOTING, None, progress
    if command is None:
        return U.FAILED, "the delivery command is missing", progress
    command_state = command["state"]
    if command_state == CommandState.FAILED:
        return U.FAILED, command.get("error") or "the box reported a failure", progress
    if command_state == CommandState.EXPIRED:
        return U.TIMED_OUT, "the box did not finish the upgrade command before it expired", progress
    if command_state == CommandState.CANCELLED:
        return U.CANCELLED, "the upgrade command was cancelled", progress
    if command_state == CommandState.SUCCEEDED:
        deadline = (finished_at or now) + dt.timedelta(seconds=health_window_s)
        if now >= deadline:
            return (
                U.TIMED_OUT,
                f"the box did not come back on {version} within {health_window_s} s of rebooting",
                progress,
            )
        return U.REBOOTING, None, 100
    if command_state == CommandState.RUNNING:
        word = (command.get("progress_message") or "").split(":", 1)[0].strip().lower()
        state = STAGE_BY_WORD.get(word, U.DOWNLOADING if state == U.SENT else state)
        progress = max(progress, int(command.get("progress") or 0))
    sent_at = upgrade.sent_at or now
    if now >= sent_at + dt.timedelta(seconds=timeout_s):
        return U.TIMED_OUT, f"stuck in {state} for more than {timeout_s} s", progress
    return state, None, progress


def upgrades_sync(*, now: dt.datetime | None = None) -> TickSummary:
    """Follow every upgrade in flight (batches of ``SYNC_BATCH`` rows locked with SKIP LOCKED)."""
    now = now or timezone.now()
    summary = TickSummary()
    last_id: uuid.UUID | None = None
    while True:
        with transaction.atomic():
            page = Upgrade.objects.select_for_update(skip_locked=True, of=("self",)).filter(
                state__in=IN_FLIGHT_STATES
            )
            if last_id is not None:
                page = page.filter(pk__gt=last_id)
            upgrades = list(page.select_related("release", "rollout").order_by("pk")[:SYNC_BATCH])
            if not upgrades:
                break
            last_id = upgrades[-1].pk
            _sync_page(upgrades, now, summary)
        if len(upgrades) < SYNC_BATCH:
            break
    return summary


def _sync_page(upgrades: list[Upgrade], now: dt.datetime, summary: TickSummary) -> None:
    commands: dict[Any, dict[str, Any]] = {
        row["id"]: dict(row)
        for row in Command.objects.filter(pk__in=[u.command_id for u in upgrades if u.command_id]).values(
            "id", "state", "progress", "progress_message", "error", "result", "finished_at"
        )
    }
    statuses: dict[Any, dict[str, Any]] = {
        row["box_id"]: dict(row)
        for row in BoxStatus.objects.filter(box_id__in=[u.box_id for u in upgrades]).values(
            "box_id",
            "online",
            "boot_id",
            "connected_at",
            "firmware_version",
            "tunnel_up",
            "wans_up",
            "last_seq",
            "last_seen_at",
            "box__protocol",
        )
    }
    changed: list[Upgrade] = []
    fields: set[str] = set()
    finished: list[Upgrade] = []
    for upgrade in upgrades:
        rollout = upgrade.rollout
        health_window_s = rollout.health_window_s if rollout else 900
        timeout_s = rollout.upgrade_timeout_s if rollout else 3600
        seq_before = upgrade.seq_at_return
        state, reason, progress = upgrade_evaluate(
            upgrade,
            version=upgrade.release.version,
            command=commands.get(upgrade.command_id),
            status=statuses.get(upgrade.box_id),
            health_window_s=health_window_s,
            timeout_s=timeout_s,
            now=now,
        )
        try:
            moved = upgrade_transition(upgrade, state, now=now, reason=reason)
        except IllegalTransition:
            logger.warning("upgrade %s: ignoring %s -> %s", upgrade.pk, upgrade.state, state)
            moved = []
        if progress != upgrade.progress:
            upgrade.progress = progress
            moved.append("progress")
        if upgrade.seq_at_return != seq_before:
            moved.append("seq_at_return")
        if moved:
            changed.append(upgrade)
            fields.update(moved)
            if upgrade.state not in IN_FLIGHT_STATES:
                finished.append(upgrade)
                summary.finished[upgrade.state] = summary.finished.get(upgrade.state, 0) + 1
    # The doorbell is best effort: a box whose command is still undelivered after a while (a rung
    # session that missed it, a reconnect in between) is rung again; the row is the truth.
    stale = now - dt.timedelta(seconds=REDELIVER_AFTER_S)
    unrung = [
        u.box_id
        for u in upgrades
        if u.state == U.SENT
        and u.sent_at is not None
        and u.sent_at < stale
        and (commands.get(u.command_id) or {}).get("state") == CommandState.PENDING
    ]
    if unrung:
        transaction.on_commit(lambda: doorbells_ring(unrung))
    if changed:
        Upgrade.objects.bulk_update(changed, sorted(fields), batch_size=500)
    summary.synced += len(upgrades)
    succeeded = [u for u in finished if u.state == U.SUCCEEDED]
    if succeeded:
        # Keep the box row's firmware version in step for targeting (live also updates it on hello).
        for upgrade in succeeded:
            Box.objects.filter(pk=upgrade.box_id).exclude(firmware_version=upgrade.release.version).update(
                firmware_version=upgrade.release.version
            )


# --- dispatch -------------------------------------------------------------------------------------


def _dispatch_candidates(
    *,
    rollout: Rollout | None,
    upgrade_ids: list[Any] | None,
    phase: int,
    force: bool,
    limit: int,
    now: dt.datetime,
) -> list[tuple[Any, Any, Any, str]]:
    """``(upgrade_id, box_id, organization_id, boot_id)`` of waiting upgrades that may go now: their
    phase is open (or the customer asked), the box is online and has no other upgrade in flight,
    the postponement is over and the maintenance window is open (unless forced). Locked, SKIP LOCKED."""
    upgrade_table = Upgrade._meta.db_table
    in_flight = ", ".join(f"'{state}'" for state in IN_FLIGHT_STATES)
    waiting = ", ".join(f"'{state}'" for state in sources_of(U.SENT))
    if rollout is not None:
        scope = "u.rollout_id = %(rollout)s AND (u.phase <= %(phase)s OR u.forced)"
    else:
        scope = "u.rollout_id IS NULL AND u.id = ANY(%(ids)s::uuid[])"
    # Only table names and constant state lists are interpolated; every value is a parameter.
    sql = f"""
        SELECT u.id, u.box_id, b.organization_id, s.boot_id
        FROM {upgrade_table} u
        JOIN {Box._meta.db_table} b ON b.id = u.box_id
        JOIN {Organization._meta.db_table} o ON o.id = b.organization_id
        JOIN {BoxStatus._meta.db_table} s ON s.box_id = u.box_id
        LEFT JOIN {BoxUpgradePolicy._meta.db_table} p ON p.box_id = u.box_id
        WHERE {scope}
          AND u.state IN ({waiting})
          AND s.online
          AND (u.not_before IS NULL OR u.not_before <= %(now)s)
          AND (%(force)s OR u.forced OR {window_sql()})
          AND NOT EXISTS (
              SELECT 1 FROM {upgrade_table} x WHERE x.box_id = u.box_id AND x.state IN ({in_flight})
          )
        ORDER BY u.forced DESC, u.phase, u.id
        LIMIT %(limit)s
        FOR UPDATE OF u SKIP LOCKED
    """  # noqa: S608
    params = {
        "rollout": rollout.pk if rollout else None,
        "ids": [str(i) for i in upgrade_ids or []],
        "phase": phase,
        "now": now,
        "force": force,
        "limit": limit,
    }
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return list(cursor.fetchall())


def _dispatch(
    candidates: list[tuple[Any, Any, Any, str]], *, release: Release, ttl_s: int, now: dt.datetime
) -> int:
    """Create the commands and move the upgrades to ``sent`` (one INSERT, one UPDATE)."""
    if not candidates:
        return 0
    command_ids = firmware_commands_create_bulk(
        boxes=[(box_id, organization_id) for _, box_id, organization_id, _ in candidates],
        release=release,
        ttl_s=ttl_s,
        now=now,
    )
    sources = ", ".join(f"'{state}'" for state in sources_of(U.SENT))
    with connection.cursor() as cursor:
        cursor.execute(
            f"""
            UPDATE {Upgrade._meta.db_table} u
            SET state = %s, sent_at = %s, state_changed_at = %s, command_id = v.command_id,
                boot_id_at_send = v.boot_id, progress = 0, reason = '', seq_at_return = NULL
            FROM unnest(%s::uuid[], %s::uuid[], %s::text[]) AS v(upgrade_id, command_id, boot_id)
            WHERE u.id = v.upgrade_id AND u.state IN ({sources})
            """,  # noqa: S608
            [
                U.SENT,
                now,
                now,
                [str(c[0]) for c in candidates],
                [str(i) for i in command_ids],
                [c[3] or "" for c in candidates],
            ],
        )
        return cursor.rowcount


def rollout_mark_paused(rollout: Rollout, *, reason: str, now: dt.datetime) -> None:
    """Pause a locked rollout in memory and save it (used by people and by the failure policy)."""
    rollout.state = RolloutState.PAUSED
    rollout.pause_reason = reason[:2000]
    rollout.paused_at = now
    rollout.save(update_fields=["state", "pause_reason", "paused_at", "updated_at"])


def upgrades_dispatch_standalone(*, upgrade_ids: list[Any], now: dt.datetime | None = None) -> int:
    """Send customers' standalone upgrades whose box is online (the others wait for the tick)."""
    now = now or timezone.now()
    with transaction.atomic():
        candidates = _dispatch_candidates(
            rollout=None, upgrade_ids=upgrade_ids, phase=0, force=True, limit=len(upgrade_ids), now=now
        )
        if not candidates:
            return 0
        releases = dict(
            Upgrade.objects.filter(pk__in=[c[0] for c in candidates]).values_list("pk", "release_id")
        )
        sent = 0
        for release in Release.objects.filter(pk__in=set(releases.values()), state=ReleaseState.PUBLISHED):
            group = [c for c in candidates if releases[c[0]] == release.pk]
            sent += _dispatch(group, release=release, ttl_s=3600, now=now)
        return sent


def _standalone_waiting(now: dt.datetime) -> int:
    ids = list(
        Upgrade.objects.filter(rollout__isnull=True, state__in=sources_of(U.SENT)).values_list(
            "pk", flat=True
        )[:1000]
    )
    return upgrades_dispatch_standalone(upgrade_ids=ids, now=now) if ids else 0


# --- advancing a rollout --------------------------------------------------------------------------


def _reconcile_waiting(rollout: Rollout, now: dt.datetime) -> None:
    """Pending upgrades of open phases whose box is online (and not postponed) become scheduled;
    scheduled ones whose box went offline (or got postponed) go back to pending."""
    table = Upgrade._meta.db_table
    status_table = BoxStatus._meta.db_table
    assert U.PENDING in sources_of(U.SCHEDULED) and U.SCHEDULED in sources_of(U.PENDING)
    with connection.cursor() as cursor:
        cursor.execute(
            f"""
            UPDATE {table} u SET state = %(scheduled)s, scheduled_at = %(now)s, state_changed_at = %(now)s
            FROM {status_table} s
            WHERE s.box_id = u.box_id AND s.online AND u.rollout_id = %(rollout)s AND u.state = %(pending)s
              AND (u.phase <= %(phase)s OR u.forced) AND (u.not_before IS NULL OR u.not_before <= %(now)s)
            """,  # noqa: S608
            {
                "scheduled": U.SCHEDULED,
                "pending": U.PENDING,
                "now": now,
                "rollout": rollout.pk,
                "phase": rollout.current_phase,
            },
        )
        cursor.execute(
            f"""
            UPDATE {table} u SET state = %(pending)s, pending_at = %(now)s, state_changed_at = %(now)s
            WHERE u.rollout_id = %(rollout)s AND u.state = %(scheduled)s
              AND ((u.not_before IS NOT NULL AND u.not_before > %(now)s)
                   OR NOT EXISTS (SELECT 1 FROM {status_table} s WHERE s.box_id = u.box_id AND s.online))
            """,  # noqa: S608
            {"scheduled": U.SCHEDULED, "pending": U.PENDING, "now": now, "rollout": rollout.pk},
        )


def _policy_breach(rollout: Rollout, by_phase: dict[int, dict[str, int]]) -> str:
    """Why the failure policy pauses the rollout now, or ""."""
    phase = rollout.current_phase
    if phase < 0:
        return ""
    phase_failures = sum(by_phase.get(phase, {}).get(state, 0) for state in FAILURE_STATES)
    total_failures = sum(states.get(s, 0) for states in by_phase.values() for s in FAILURE_STATES)
    new_phase_failures = max(phase_failures - rollout.phase_failure_baseline, 0)
    new_total_failures = max(total_failures - rollout.failure_baseline, 0)
    size = rollout.phase_sizes[phase] if phase < len(rollout.phase_sizes) else 0
    rate = 100.0 * new_phase_failures / size if size else 0.0
    if new_phase_failures and rate > rollout.max_failure_pct:
        return (
            f"phase {phase + 1} ({rollout.phases[phase]} %): {new_phase_failures} of {size} upgrades failed "
            f"({rate:.1f} %), above the {rollout.max_failure_pct:g} % limit"
        )
    if rollout.max_failures is not None and new_total_failures > rollout.max_failures:
        return f"{new_total_failures} upgrades failed, above the limit of {rollout.max_failures}"
    return ""


def _count(by_phase: dict[int, dict[str, int]], states: tuple[str, ...] | list[str], upto: int) -> int:
    return sum(
        count for phase, sts in by_phase.items() if phase <= upto for s, count in sts.items() if s in states
    )


def rollout_advance(
    *, rollout_id: Any, now: dt.datetime | None = None, summary: TickSummary | None = None
) -> str:
    """Advance one rollout by one step; returns its state. Skips (returns "busy") if another tick
    holds its lock. Called by the periodic task for every active rollout."""
    now = now or timezone.now()
    summary = summary or TickSummary()
    with transaction.atomic():
        rollout = (
            Rollout.objects.select_for_update(skip_locked=True)
            .select_related("release")
            .filter(pk=rollout_id, state__in=TICKED_ROLLOUT_STATES)
            .first()
        )
        if rollout is None:
            return "busy"
        summary.rollouts += 1
        if rollout.state == RolloutState.SCHEDULED:
            if rollout.start_at and rollout.start_at > now:
                return rollout.state
            rollout.state = RolloutState.RUNNING
            rollout.started_at = now
            rollout.save(update_fields=["state", "started_at", "updated_at"])
            audit_record(
                actor=SYSTEM,
                action="rollout.started",
                target=rollout,
                after={"start_at": str(rollout.start_at)},
            )
        if rollout.current_phase < 0 and rollout.state == RolloutState.RUNNING:
            _open_phase(rollout, 0, now, summary)
        by_phase = rollout_state_counts(rollout_id=rollout.pk)
        if rollout.state == RolloutState.RUNNING:
            reason = _policy_breach(rollout, by_phase)
            if reason:
                rollout_mark_paused(rollout, reason=reason, now=now)
                audit_record(
                    actor=SYSTEM, action="rollout.auto_pause", target=rollout, after={"reason": reason}
                )
                summary.paused.append(str(rollout.pk))
                logger.warning("rollout %s paused: %s", rollout.pk, reason)
        if rollout.state != RolloutState.RUNNING:
            return rollout.state
        _reconcile_waiting(rollout, now)
        in_flight = _count(by_phase, IN_FLIGHT_STATES, upto=10**6)
        slots = rollout.max_in_flight - in_flight
        if slots > 0:
            candidates = _dispatch_candidates(
                rollout=rollout,
                upgrade_ids=None,
                phase=rollout.current_phase,
                force=rollout.force,
                limit=slots,
                now=now,
            )
            sent = _dispatch(candidates, release=rollout.release, ttl_s=rollout.upgrade_timeout_s, now=now)
            if sent:
                summary.dispatched += sent
                audit_record(
                    actor=SYSTEM,
                    action="rollout.dispatch",
                    target=rollout,
                    after={"sent": sent, "phase": rollout.current_phase},
                )
            by_phase = rollout_state_counts(rollout_id=rollout.pk)
        _progress_phases(rollout, by_phase, now, summary)
        return rollout.state


def _open_phase(rollout: Rollout, phase: int, now: dt.datetime, summary: TickSummary) -> None:
    rollout.current_phase = phase
    rollout.phase_opened_at = now
    rollout.phase_settled_at = None
    rollout.phase_failure_baseline = 0
    rollout.save(
        update_fields=[
            "current_phase",
            "phase_opened_at",
            "phase_settled_at",
            "phase_failure_baseline",
            "updated_at",
        ]
    )
    summary.phases_opened += 1
    audit_record(
        actor=SYSTEM,
        action="rollout.phase_open",
        target=rollout,
        after={"phase": phase, "percent": rollout.phases[phase]},
    )
    _reconcile_waiting(rollout, now)


def _progress_phases(
    rollout: Rollout, by_phase: dict[int, dict[str, int]], now: dt.datetime, summary: TickSummary
) -> None:
    """Settle the open phase (nothing scheduled or in flight in it: offline and postponed boxes do not
    hold it), then after the soak open the next one, or finish the rollout."""
    current = rollout.current_phase
    busy = _count(by_phase, (U.SCHEDULED, *IN_FLIGHT_STATES), upto=current)
    if busy:
        if rollout.phase_settled_at is not None:
            rollout.phase_settled_at = None
            rollout.save(update_fields=["phase_settled_at", "updated_at"])
        return
    if rollout.phase_settled_at is None:
        rollout.phase_settled_at = now
        rollout.save(update_fields=["phase_settled_at", "updated_at"])
    last = len(rollout.phases) - 1
    if current < last:
        if now >= rollout.phase_settled_at + dt.timedelta(seconds=rollout.soak_s):
            _open_phase(rollout, current + 1, now, summary)
        return
    waiting = _count(by_phase, (U.PENDING,), upto=current)
    grace_over = rollout.phase_opened_at is not None and now >= rollout.phase_opened_at + dt.timedelta(
        seconds=rollout.offline_grace_s
    )
    if waiting and not grace_over:
        return  # offline (or postponed) boxes are still expected back while the rollout is active
    if waiting:
        rollout.upgrades.filter(state=U.PENDING).update(
            state=U.SKIPPED, skipped_at=now, state_changed_at=now, reason=SkipReason.OFFLINE_UNTIL_END
        )
    rollout.state = RolloutState.COMPLETED
    rollout.finished_at = now
    rollout.save(update_fields=["state", "finished_at", "updated_at"])
    summary.completed += 1
    audit_record(actor=SYSTEM, action="rollout.complete", target=rollout, after={"skipped_offline": waiting})


def rollouts_tick(*, now: dt.datetime | None = None) -> TickSummary:
    """One full tick of the engine: follow upgrades in flight, send customers' waiting upgrades, then
    advance every active rollout. Safe to run concurrently (row locks with SKIP LOCKED)."""
    now = now or timezone.now()
    summary = upgrades_sync(now=now)
    summary.dispatched += _standalone_waiting(now)
    for rollout_id in Rollout.objects.filter(state__in=TICKED_ROLLOUT_STATES).values_list("pk", flat=True):
        try:
            rollout_advance(rollout_id=rollout_id, now=now, summary=summary)
        except Exception:  # one broken rollout must not stop the others; logged with its id
            logger.exception("advancing rollout %s failed", rollout_id)
    return summary
