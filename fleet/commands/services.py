"""Writes for box commands. Every state change goes through ``command_transition``.

The agent session (fleet/consumers.py) calls ``commands_pending_for_box`` on hello and on a
``doorbell_command`` group message, and ``command_progress`` / ``command_complete`` for the agent's
reports. Reports for a finished command (a duplicate after a reconnect, or a late result for an
expired or cancelled command) are ignored and logged, never an error for the agent.
"""

from __future__ import annotations

import logging
import re
from datetime import datetime, timedelta
from typing import Any, cast
from uuid import UUID

from django.conf import settings
from django.db import transaction
from django.utils import timezone
from otb_protocol import (
    DIAGNOSTIC_CHECKS,
    SPEED_TEST_DEFAULT_BYTES,
    SPEED_TEST_DIRECTIONS,
    SPEED_TEST_MAX_BYTES,
    interface_name_problem,
)

from fleet.commands.choices import (
    DELIVERABLE_STATES,
    FINISHED_STATES,
    OTB_ONLY_KINDS,
    REMOTE_ACCESS_KINDS,
    CommandKind,
    CommandState,
)
from fleet.commands.models import Backup, BackupFile, Command
from fleet.core.access import authorize
from fleet.core.audit import Actor, audit_record
from fleet.core.choices import BoxProtocol, BoxState, Role
from fleet.core.doorbells import doorbell_command
from fleet.core.errors import Conflict, InvalidInput, NotFound
from fleet.core.events import event_record
from fleet.core.models import Box

logger = logging.getLogger(__name__)

DEFAULT_TTL_S = 3600
MIN_TTL_S = 10
MAX_TTL_S = 24 * 3600
MAX_OUTPUT_BYTES = 256 * 1024
# ``restart_services.services`` (stock OverTheBox boxes run ``/etc/init.d/<name> restart`` for each).
SERVICE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
MAX_SERVICES = 16
# What a stock box restarts when no list is given: the tunnel and the proxy our configuration sets up.
OTB_DEFAULT_SERVICES = ("glorytun", "shadowsocks")

S = CommandState
# The one table of legal moves. ``sent -> sent`` is a redelivery (after a reconnect).
TRANSITIONS: dict[str, frozenset[str]] = {
    S.PENDING: frozenset({S.SENT, S.RUNNING, S.SUCCEEDED, S.FAILED, S.EXPIRED, S.CANCELLED}),
    S.SENT: frozenset({S.SENT, S.RUNNING, S.SUCCEEDED, S.FAILED, S.EXPIRED, S.CANCELLED}),
    S.RUNNING: frozenset({S.SUCCEEDED, S.FAILED, S.EXPIRED}),
    S.SUCCEEDED: frozenset(),
    S.FAILED: frozenset(),
    S.EXPIRED: frozenset(),
    S.CANCELLED: frozenset(),
}


def command_can_transition(*, current: str, target: str) -> bool:
    return target in TRANSITIONS.get(current, frozenset())


def command_transition(*, command: Command, target: str, now: datetime | None = None) -> list[str]:
    """Move ``command`` to ``target`` in memory, stamping the matching timestamp; returns the changed
    field names for ``save(update_fields=...)``. Raises Conflict for an illegal move."""
    if not command_can_transition(current=command.state, target=target):
        raise Conflict(f"a {command.state} command cannot become {target}", field="state")
    now = now or timezone.now()
    changed = ["state"]
    if target == S.SENT:
        command.sent_at = now
        command.delivery_count += 1
        changed += ["sent_at", "delivery_count"]
    elif target == S.RUNNING:
        command.started_at = now
        changed.append("started_at")
    elif target in FINISHED_STATES:
        command.finished_at = now
        changed.append("finished_at")
    command.state = target
    return changed


def _validate_params(kind: str, params: Any, *, otb: bool = False) -> dict[str, Any]:
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise InvalidInput("params must be an object", field="params")
    allowed: dict[str, tuple[str, ...]] = {
        CommandKind.REBOOT: ("delay_s",),
        # The agent restarts its own set; a stock OverTheBox box restarts the init scripts named.
        CommandKind.RESTART_SERVICES: ("services",) if otb else (),
        CommandKind.DIAGNOSTICS: ("checks",),
        CommandKind.SPEED_TEST: ("bytes", "direction", "iface"),
        CommandKind.REFRESH_CONFIG: (),
        CommandKind.FIRMWARE_UPGRADE: ("release_id", "version", "url", "sha256", "signature", "size"),
        CommandKind.BACKUP: (),
        CommandKind.RESTORE: ("backup_id",),
        CommandKind.REMOTE_ACCESS_PREPARE: ("remote_access_id",),
        CommandKind.REMOTE_ACCESS_CONNECT: (
            "remote_access_id",
            "ip",
            "port",
            "forwarded_port",
            "server_public_key",
            "remote_public_key",
        ),
        CommandKind.REMOTE_ACCESS_DISCONNECT: ("remote_access_id",),
        CommandKind.REFRESH_PROPERTIES: (),
        CommandKind.UPDATE_RELEASE_CHANNEL: (),
    }
    for key in params:
        if key not in allowed[kind]:
            raise InvalidInput(f"unknown parameter {key!r} for {kind}", field=f"params.{key}")
    clean = dict(params)
    if kind == CommandKind.RESTART_SERVICES and otb:
        services = params.get("services", list(OTB_DEFAULT_SERVICES))
        if (
            not isinstance(services, list)
            or not 1 <= len(services) <= MAX_SERVICES
            or any(not isinstance(name, str) or not SERVICE_NAME.match(name) for name in services)
        ):
            raise InvalidInput(
                f"services must be a list of 1 to {MAX_SERVICES} init script names (letters, digits, _ . -)",
                field="params.services",
            )
        clean["services"] = list(dict.fromkeys(services))
    if kind == CommandKind.REBOOT and "delay_s" in params:
        delay = params["delay_s"]
        if type(delay) is not int or not 0 <= delay <= 3600:
            raise InvalidInput("delay_s must be an integer from 0 to 3600", field="params.delay_s")
    if kind == CommandKind.DIAGNOSTICS:
        checks = params.get("checks", list(DIAGNOSTIC_CHECKS))
        if (
            not isinstance(checks, list)
            or not checks
            or any(check not in DIAGNOSTIC_CHECKS for check in checks)
        ):
            raise InvalidInput(
                f"checks must be a non-empty list drawn from {', '.join(DIAGNOSTIC_CHECKS)}",
                field="params.checks",
            )
        clean["checks"] = list(dict.fromkeys(checks))
    if kind == CommandKind.SPEED_TEST:
        size = params.get("bytes", SPEED_TEST_DEFAULT_BYTES)
        if type(size) is not int or not 1 <= size <= SPEED_TEST_MAX_BYTES:
            raise InvalidInput(
                f"bytes must be an integer from 1 to {SPEED_TEST_MAX_BYTES} (100 MB)", field="params.bytes"
            )
        direction = params.get("direction", "download")
        if direction not in SPEED_TEST_DIRECTIONS:
            raise InvalidInput(
                f"Choose the speed test's direction: {', '.join(SPEED_TEST_DIRECTIONS)}.",
                field="params.direction",
            )
        iface = params.get("iface")
        problem = interface_name_problem(iface) if iface is not None else None
        if problem:
            raise InvalidInput(f"The link to test through {problem}.", field="params.iface")
        clean.update(bytes=size, direction=direction)
    return clean


def _restore_params_check(box: Box, params: dict[str, Any]) -> None:
    """``restore.backup_id`` must name a backup of this very box that holds files."""
    backup_id = params.get("backup_id")
    try:
        parsed = UUID(backup_id) if isinstance(backup_id, str) else None
    except ValueError:
        parsed = None
    backup = Backup.objects.filter(pk=parsed, box_id=box.pk).first() if parsed else None
    if backup is None:
        raise InvalidInput("backup_id must name a backup of this box", field="params.backup_id")
    if backup.file_count == 0:
        raise InvalidInput("this backup holds no file", field="params.backup_id")
    params["backup_id"] = str(parsed)


def _restore_backup_hold(box: Box, params: dict[str, Any]) -> None:
    """Inside the transaction creating a ``restore``: lock the box row (``backups_prune`` and
    ``backup_delete`` take it too, and spare a backup an open restore names, so the backup cannot
    vanish between this check and the commit), check the backup is still there, and decrypt every
    file so a backup the configured keys cannot open is refused now (Conflict ``backup_unreadable``)
    rather than failing on the box."""
    Box.objects.select_for_update().filter(pk=box.pk).values_list("pk", flat=True).first()
    _restore_params_check(box, params)
    for file in BackupFile.objects.filter(backup_id=params["backup_id"]).only(
        "backup", "filename", "content_ciphertext"
    ):
        file.content  # noqa: B018 -- the decryption is the check


def _validate_ttl(ttl_s: Any) -> int:
    if ttl_s is None:
        return DEFAULT_TTL_S
    if type(ttl_s) is not int or not MIN_TTL_S <= ttl_s <= MAX_TTL_S:
        raise InvalidInput(f"ttl_s must be an integer from {MIN_TTL_S} to {MAX_TTL_S}", field="ttl_s")
    return ttl_s


def command_validate(
    *, box: Box, kind: str, params: Any, ttl_s: Any, internal: bool = False
) -> tuple[dict[str, Any], int]:
    """Check a would-be command without writing: returns (clean params, ttl seconds); raises
    InvalidInput naming ``kind``, ``params.<key>`` or ``ttl_s``, or Conflict for an unclaimed box.
    Shared by ``command_create`` and the admin form so both say the same thing."""
    if kind not in CommandKind.values:
        raise InvalidInput(f"Choose a command: {', '.join(CommandKind.values)}.", field="kind")
    if kind == CommandKind.FIRMWARE_UPGRADE and not internal:
        raise InvalidInput(
            "Firmware upgrades are started by a rollout or by “Upgrade now”, not as a command.", field="kind"
        )
    if kind in REMOTE_ACCESS_KINDS and not internal:
        raise InvalidInput("Remote access commands are sent by an approved remote access.", field="kind")
    otb = box.protocol == BoxProtocol.OTB
    if kind in OTB_ONLY_KINDS and not otb:
        raise InvalidInput(f"{kind} is only for stock OverTheBox boxes", field="kind")
    clean_params = _validate_params(kind, params, otb=otb)
    if kind == CommandKind.RESTORE:
        _restore_params_check(box, clean_params)
    ttl = _validate_ttl(ttl_s)
    if box.state != BoxState.CLAIMED or box.organization_id is None:
        raise Conflict("Commands can only be sent to a claimed box.", field="box")
    return clean_params, ttl


def _open_commands_check(box: Box, now: datetime) -> None:
    """Refuse a person's command while the box already has ``MAX_OPEN_COMMANDS_PER_BOX`` waiting (a
    script in a loop must not queue thousands of reboots). The box row is locked so that concurrent
    requests count each other."""
    limit = int(cast(Any, settings.OTB)["MAX_OPEN_COMMANDS_PER_BOX"])
    Box.objects.select_for_update().filter(pk=box.pk).values_list("pk", flat=True).first()
    waiting = Command.objects.filter(box=box, state__in=DELIVERABLE_STATES, expires_at__gt=now).count()
    if waiting >= limit:
        raise Conflict(
            f"This box already has {waiting} commands waiting (at most {limit}): wait for them to "
            "finish or expire, or cancel some.",
            field="kind",
            code="too_many_commands",
        )


def command_create(
    *,
    actor: Actor,
    box: Box,
    kind: str,
    params: dict[str, Any] | None = None,
    ttl_s: int | None = None,
    internal: bool = False,
) -> Command:
    """Queue a command for a claimed box and ring its session on commit.

    Needs the admin role in the box's organisation (staff and the system always may).
    ``firmware_upgrade`` is reserved for the rollout engine, which passes ``internal=True`` (no
    limit on open commands). Raises InvalidInput naming ``kind``, ``params.<key>`` or ``ttl_s``.
    """
    authorize(actor, organization_id=box.organization_id, minimum=Role.ADMIN)
    clean_params, ttl = command_validate(box=box, kind=kind, params=params, ttl_s=ttl_s, internal=internal)
    organization_id = cast(UUID, box.organization_id)  # command_validate refused an unclaimed box
    now = timezone.now()
    with transaction.atomic():
        if kind == CommandKind.RESTORE:
            _restore_backup_hold(box, clean_params)
        if not internal:
            _open_commands_check(box, now)
        command = Command.objects.create(
            box=box,
            organization_id=organization_id,
            kind=kind,
            params=clean_params,
            created_by=actor.user if getattr(actor.user, "pk", None) else None,
            expires_at=now + timedelta(seconds=ttl),
        )
        audit_record(
            actor=actor,
            action="command.create",
            box=box,
            organization=box.organization,
            target=command,
            after={"kind": kind, "params": clean_params, "ttl_s": ttl},
        )
        box_id = box.pk
        transaction.on_commit(lambda: doorbell_command(box_id))
    return command


def command_protocol_frame(command: Command) -> dict[str, Any]:
    """The protocol ``command`` frame for a command."""
    return {
        "type": "command",
        "id": str(command.id),
        "kind": command.kind,
        "params": command.params or {},
        "expires_at": command.expires_at.timestamp(),
    }


def commands_pending_for_box(*, box_id: UUID | str) -> list[dict[str, Any]]:
    """Protocol ``command`` frames for the box's unexpired pending or sent commands, oldest first,
    each marked sent (``delivery_count`` counts redeliveries). Rows another session is delivering
    right now are skipped rather than waited for."""
    now = timezone.now()
    with transaction.atomic(savepoint=False):  # no savepoint round trips inside a hello
        commands = list(
            Command.objects.select_for_update(skip_locked=True)
            .filter(box_id=box_id, state__in=DELIVERABLE_STATES, expires_at__gt=now)
            .order_by("created_at", "id")[:100]
        )
        for command in commands:
            command.save(update_fields=command_transition(command=command, target=S.SENT, now=now))
    return [command_protocol_frame(command) for command in commands]


def command_take_next(*, box_id: UUID | str, exclude_kinds: tuple[str, ...] = ()) -> Command | None:
    """The box's oldest unexpired **pending** command, marked sent; None when there is none.

    For boxes that poll (stock OverTheBox boxes): a command is handed out once. It is never handed
    out again while sent (a reboot reports its result only after rebooting: handing it out again
    would reboot the box in a loop); unanswered, it expires. ``exclude_kinds`` are left pending."""
    now = timezone.now()
    with transaction.atomic():
        command = (
            Command.objects.select_for_update(skip_locked=True)
            .filter(box_id=box_id, state=S.PENDING, expires_at__gt=now)
            .exclude(kind__in=exclude_kinds)
            .order_by("created_at", "id")
            .first()
        )
        if command is not None:
            command.save(update_fields=command_transition(command=command, target=S.SENT, now=now))
    return command


MAX_LATE_REPORTS = 5


def command_late_report(*, box_id: UUID | str, command_id: UUID | str, report: dict[str, Any]) -> Command:
    """Keep a result that arrived for an already finished command (a stock box reports a failed
    sysupgrade ``error`` at once and ``done`` after its next start) in ``result["late_reports"]``
    (the newest ``MAX_LATE_REPORTS``) without changing its state. Raises NotFound for a command of
    another box."""
    with transaction.atomic():
        command = _locked_command_of_box(box_id, command_id)
        result = dict(command.result) if isinstance(command.result, dict) else {}
        late = list(result.get("late_reports") or [])
        late.append({**_without_nul(report), "at": timezone.now().isoformat()})
        result["late_reports"] = late[-MAX_LATE_REPORTS:]
        command.result = result
        command.save(update_fields=["result"])
    logger.info("late result for %s command %s (%s) kept", command.kind, command.pk, command.state)
    return command


def command_mark_sent(*, command_id: UUID | str) -> Command | None:
    """Record that the command frame went out; None (and a log line) if it is no longer deliverable."""
    with transaction.atomic():
        command = Command.objects.select_for_update().filter(pk=command_id).first()
        if command is None or command.state not in DELIVERABLE_STATES:
            logger.info("command %s not deliverable, not marked sent", command_id)
            return None
        command.save(update_fields=command_transition(command=command, target=S.SENT))
    return command


def _locked_command_of_box(box_id: UUID | str, command_id: UUID | str) -> Command:
    try:
        command = Command.objects.select_for_update().select_related("box").get(pk=command_id, box_id=box_id)
    except (Command.DoesNotExist, ValueError) as exc:
        raise NotFound("command not found", field="id") from exc
    return command


def _without_nul(value: Any) -> Any:
    """``value`` (text, or JSON content) with every NUL character dropped from its strings and keys:
    PostgreSQL text and jsonb cannot hold one, and an agent's output is kept as it came otherwise (the
    telemetry writer and the session gate drop NUL from the box's strings the same way). The protocol
    bounds the nesting of free-form content, so the recursion is shallow."""
    if isinstance(value, str):
        return value.replace("\x00", "") if "\x00" in value else value
    if isinstance(value, dict):
        return {_without_nul(key): _without_nul(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_without_nul(item) for item in value]
    return value


def _box_actor(command: Command) -> Actor:
    return Actor(label=f"box:{command.box.serial}")


def command_progress(
    *, box_id: UUID | str, command_id: UUID | str, progress: int, message: str = ""
) -> Command | None:
    """The agent reports progress: a delivered command becomes running. Progress for a finished
    command is ignored (returns None). Raises NotFound for a command of another box."""
    if type(progress) is not int or not 0 <= progress <= 100:
        raise InvalidInput("progress must be an integer from 0 to 100", field="progress")
    with transaction.atomic():
        command = _locked_command_of_box(box_id, command_id)
        if command.state in FINISHED_STATES:
            logger.info("progress for finished command %s (%s) ignored", command.pk, command.state)
            return None
        changed = ["progress", "progress_message"]
        if command.state != S.RUNNING:
            changed += command_transition(command=command, target=S.RUNNING)
            audit_record(actor=_box_actor(command), action="command.running", box=command.box, target=command)
        command.progress = max(command.progress, progress)
        command.progress_message = _without_nul(message or "")[:512]
        command.save(update_fields=changed)
    return command


def command_complete(
    *,
    box_id: UUID | str,
    command_id: UUID | str,
    ok: bool,
    output: dict[str, Any] | None,
    error: str | None,
) -> Command | None:
    """The agent's result: the command succeeds or fails and its output is stored; a
    ``command_finished`` event joins the box timeline. A result for a finished command (a duplicate
    after a reconnect, or after expiry/cancel) is ignored and logged: returns None."""
    if output is not None and not isinstance(output, dict):
        raise InvalidInput("output must be an object", field="output")
    with transaction.atomic():
        command = _locked_command_of_box(box_id, command_id)
        if command.state in FINISHED_STATES:
            logger.info("result for finished command %s (%s) ignored", command.pk, command.state)
            return None
        target = S.SUCCEEDED if ok else S.FAILED
        changed = command_transition(command=command, target=target)
        # Merged into what the command holds already: a stock OverTheBox box's diagnostic items
        # arrive (otbcompat) before the action's own result.
        command.result = {**(command.result or {}), **_without_nul(output or {})}
        command.error = _without_nul(error or "")[:4096]
        if ok:
            command.progress = 100
        command.save(update_fields=[*changed, "result", "error", "progress"])
        audit_record(
            actor=_box_actor(command),
            action=f"command.{target}",
            box=command.box,
            target=command,
            after={"ok": ok, "error": command.error},
        )
        _record_finished_event(command)
    return command


def _record_finished_event(command: Command) -> None:
    event_record(
        box_id=command.box_id,
        organization_id=command.organization_id,
        kind="command_finished",
        ts=command.finished_at,
        data={
            "command_id": str(command.pk),
            "kind": command.kind,
            "state": command.state,
            "error": command.error,
        },
    )


def command_cancel(*, actor: Actor, command: Command) -> Command:
    """Cancel a command the box has not started (pending or sent). Needs admin/owner (or staff).
    Raises Conflict once it is running or finished. A box that already received it will still run
    it; its result is then ignored."""
    with transaction.atomic():
        locked = Command.objects.select_for_update().select_related("box").get(pk=command.pk)
        authorize(actor, organization_id=locked.organization_id, minimum=Role.ADMIN)
        before = locked.state
        locked.save(update_fields=command_transition(command=locked, target=S.CANCELLED))
        audit_record(
            actor=actor,
            action="command.cancel",
            box=locked.box,
            target=locked,
            before={"state": before},
            after={"state": locked.state},
        )
    return locked


def commands_expire(*, now: datetime | None = None) -> int:
    """Expire every open (pending, sent or running) command whose ``expires_at`` has passed;
    returns how many. One UPDATE: idempotent and safe to run from several workers."""
    now = now or timezone.now()
    expirable = [state for state, targets in TRANSITIONS.items() if S.EXPIRED in targets]
    return Command.objects.filter(state__in=expirable, expires_at__lte=now).update(
        state=S.EXPIRED, finished_at=now
    )
