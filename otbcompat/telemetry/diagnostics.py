"""The ``diagnostic`` action's reports: ``POST devices/{id}/diagnostics`` with ``{"device_action_id":
<action id>}`` answers ``{"diagnostic_id"}``; then one ``PUT devices/{id}/diagnostics/{diagnostic_id}``
per script of ``/usr/share/otb/diagnostics.d`` with ``{"name", "cmd", "exit_code", "output"}``
(``output`` is stdout and stderr, ``set -x`` traces included).

The action id is our diagnostics command's id (``fleet.commands``): the run marks it running, and
each item joins the command's ``result`` under ``checks`` (``{name: {ok, exit_code, cmd, output,
error}}``, the shape of our agent's checks), so the box page shows them like an agent's diagnostics.
The action's own result (``PUT actions/{id}``) comes after the items and merges with them.
"""

from __future__ import annotations

import uuid
from typing import Any

from django.db import transaction

from fleet.commands.choices import CommandKind
from fleet.commands.models import Command
from fleet.commands.services import command_progress
from otbcompat.errors import OtbNotFound
from otbcompat.models import OtbDevice, OtbDiagnostic
from otbcompat.telemetry import fields

MAX_ITEMS = 32
NAME_MAX = 64
CMD_MAX = 512
# An item's output is kept up to this many characters (the start of it, then a note of what was cut);
# the request itself may carry up to DIAGNOSTIC_BODY_MAX bytes.
OUTPUT_KEEP = 16 * 1024
DIAGNOSTIC_BODY_MAX = 1024 * 1024


def _clip(text: str) -> str:
    if len(text) <= OUTPUT_KEEP:
        return text
    note = f"\n...[{len(text) - OUTPUT_KEEP + 64} characters cut]"
    return text[: OUTPUT_KEEP - 64] + note


def diagnostic_start(*, device: OtbDevice, body: Any) -> OtbDiagnostic:
    """A new diagnostic run for the box's diagnostics command ``device_action_id`` (400 when the
    box has no such command); the command becomes running."""
    payload = fields.mapping(body, "body")
    raw = payload.get("device_action_id")
    if isinstance(raw, bool) or not isinstance(raw, str | int):
        raise fields.bad("device_action_id", "the id of the diagnostic action is required")
    try:
        command_id = uuid.UUID(str(raw).strip())
    except ValueError as exc:
        raise fields.bad("device_action_id", "not an action of this box") from exc
    box = device.box
    command = (
        Command.objects.filter(pk=command_id, box=box, kind=CommandKind.DIAGNOSTICS).first()
        if box is not None
        else None
    )
    if command is None:
        raise fields.bad("device_action_id", "not a diagnostic action of this box")
    with transaction.atomic():
        diagnostic = OtbDiagnostic.objects.create(device=device, command=command)
        command_progress(
            box_id=command.box_id, command_id=command.pk, progress=0, message="diagnostics running"
        )
    return diagnostic


def diagnostic_item_add(*, device: OtbDevice, diagnostic_id: str, body: Any) -> dict[str, Any]:
    """One item of a run of this device (404 for any other id); it joins the command's result."""
    try:
        parsed = uuid.UUID(diagnostic_id)
    except ValueError as exc:
        raise OtbNotFound("no such diagnostic") from exc
    item = fields.mapping(body, "body")
    name = fields.text(item.get("name"), "name", max_len=NAME_MAX + 2, required=True).strip()
    name = name.removeprefix("./")[:NAME_MAX]  # the box names them by ``find .`` when not told which
    cmd = fields.text(item.get("cmd"), "cmd", max_len=CMD_MAX)
    exit_code = fields.integer(item.get("exit_code"), "exit_code", minimum=-(2**31), maximum=2**31 - 1)
    output = _clip(fields.text(item.get("output"), "output", max_len=DIAGNOSTIC_BODY_MAX))
    check = {
        "ok": exit_code == 0,
        "exit_code": exit_code,
        "cmd": cmd,
        "output": output,
        "error": None if exit_code == 0 else f"exit status {exit_code}",
    }
    with transaction.atomic():
        diagnostic = OtbDiagnostic.objects.select_for_update().filter(pk=parsed, device=device).first()
        if diagnostic is None:
            raise OtbNotFound("no such diagnostic")
        command = Command.objects.select_for_update().get(pk=diagnostic.command_id)
        result = dict(command.result or {})
        checks = dict(result.get("checks") or {})
        if name not in checks and len(checks) >= MAX_ITEMS:
            raise fields.bad("name", f"at most {MAX_ITEMS} items per diagnostic")
        checks[name] = check
        result["checks"] = checks
        result["diagnostic_id"] = str(diagnostic.pk)
        command.result = result
        command.save(update_fields=["result"])
        diagnostic.items = len(checks)
        diagnostic.save(update_fields=["items"])
    return check
