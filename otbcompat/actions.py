"""The action queue of a stock OverTheBox box: ``GET devices/{id}/actions/todo`` and the results it
PUTs back, on top of our ``fleet.commands`` rows.

What a poll answers, first match wins:

1. ``askServiceConfirmation`` (id null) when the device is linked to a box but not confirmed, at most
   once per ``OTB_COMPAT_ASK_CONFIRMATION_EVERY_S`` (a Redis key; the box only needs it once, until its
   owner clicks *Activate*);
2. ``configure`` (id null) when it is confirmed and ``box.config_hash != box.applied_config_hash``, at
   most once per ``OTB_COMPAT_CONFIGURE_EVERY_S`` (serving ``config`` records the applied hash);
3. the box's oldest pending, unexpired command, mapped by ``ACTIONS`` (action id = command id), marked
   sent: it is handed out once (``fleet.commands.services.command_take_next``);
4. otherwise ``wait`` with ``OTB_COMPAT_POLL_DELAY_S``.

The ASGI fast path (``otbcompat.fastpath``) answers case 4 itself when one query shows none of the
others can apply; everything else comes here.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Callable
from typing import Any, cast

from django.conf import settings
from django.utils import timezone

from fleet.commands.choices import CommandKind
from fleet.commands.models import Command
from fleet.commands.services import (
    OTB_DEFAULT_SERVICES,
    command_complete,
    command_late_report,
    command_take_next,
)
from fleet.core.errors import InvalidInput, NotFound
from otbcompat.downloads import firmware_path
from otbcompat.errors import OtbBadRequest, OtbNotFound
from otbcompat.models import OtbDevice
from otbcompat.presence import redis_client, seen_key
from otbcompat.selectors import otb_release_feeds
from otbcompat.usign import UsignError, signature_file_from_b64

logger = logging.getLogger(__name__)

Answer = dict[str, Any]
DETAILS_MAX = 32 * 1024
AGENT_IMAGE_PATH = re.compile(r"^/api/v1/agent/firmware/[0-9a-f-]{36}/image$")


class ActionUnavailable(Exception):
    """This command cannot be given to a stock box (the reason becomes the command's error)."""


def setting(name: str) -> int:
    return int(cast(dict[str, Any], settings.OTB)[name])


def wait_answer() -> Answer:
    return {"id": None, "action": "wait", "arguments": {"delay": setting("OTB_COMPAT_POLL_DELAY_S")}}


def _sysupgrade_arguments(command: Command, base_url: str) -> dict[str, Any]:
    params = command.params or {}
    if not AGENT_IMAGE_PATH.match(str(params.get("url") or "")):
        raise ActionUnavailable(
            "a stock OverTheBox box needs an image uploaded to otb-fleet (it fetches <url>.sig beside it)"
        )
    public_key = str(cast(dict[str, Any], settings.OTB).get("FIRMWARE_SIGNING_PUBLIC_KEY") or "")
    if not public_key:
        raise ActionUnavailable("OTB_FIRMWARE_SIGNING_PUBLIC_KEY is not set: no usign signature to serve")
    try:
        signature_file_from_b64(str(params.get("signature") or ""), public_key)
    except UsignError as exc:
        raise ActionUnavailable(f"the release signature cannot be served to usign: {exc}") from exc
    ttl_s = max(60, int((command.expires_at - timezone.now()).total_seconds()) + 3600)
    path = firmware_path(release_id=str(params["release_id"]), version=str(params["version"]), ttl_s=ttl_s)
    return {"url": f"{base_url}{path}"}


def _release_channel_arguments(command: Command, base_url: str) -> dict[str, Any]:
    # The box truncates /etc/opkg/distfeeds.conf before it reads our answer (a shell redirection),
    # then writes one line per feed: with no feeds configured it would be left with none at all.
    if not otb_release_feeds(box=command.box):
        raise ActionUnavailable(
            "no opkg feeds are configured for the box's release channel (OTB_COMPAT_RELEASE_FEEDS): "
            "the box would empty its /etc/opkg/distfeeds.conf"
        )
    return {}


ArgumentBuilder = Callable[[Command, str], dict[str, Any]]


def _no_arguments(command: Command, base_url: str) -> dict[str, Any]:
    return {}


def _backup_id(command: Command, base_url: str) -> dict[str, Any]:
    return {"backup_id": str((command.params or {}).get("backup_id") or "")}


def _params(command: Command, base_url: str) -> dict[str, Any]:
    """The command's parameters as the action's arguments (the remote access service writes them in
    the box's names: remote_access_id, ip, port, forwarded_port, server_public_key, remote_public_key)."""
    return dict(command.params or {})


def _services(command: Command, base_url: str) -> dict[str, Any]:
    return {"services": list((command.params or {}).get("services") or OTB_DEFAULT_SERVICES)}


# Our command kind -> (the box's action, its arguments). The box runs /bin/otb-action-<action>.
ACTIONS: dict[str, tuple[str, ArgumentBuilder]] = {
    CommandKind.REBOOT: ("reboot", _no_arguments),
    CommandKind.RESTART_SERVICES: ("restartServices", _services),
    CommandKind.DIAGNOSTICS: ("diagnostic", _no_arguments),
    CommandKind.SPEED_TEST: ("speedtest", _no_arguments),
    CommandKind.REFRESH_CONFIG: ("configure", _no_arguments),
    CommandKind.FIRMWARE_UPGRADE: ("sysupgrade", _sysupgrade_arguments),
    # The box posts its files with the action id as device_action_id (otbcompat/backup_views.py).
    CommandKind.BACKUP: ("backup", _no_arguments),
    CommandKind.RESTORE: ("restore", _backup_id),
    CommandKind.REFRESH_PROPERTIES: ("refreshProperties", _no_arguments),
    CommandKind.REMOTE_ACCESS_PREPARE: ("remoteAccessPrepare", _params),
    CommandKind.REMOTE_ACCESS_CONNECT: ("remoteAccessConnect", _params),
    CommandKind.REMOTE_ACCESS_DISCONNECT: ("remoteAccessDisconnect", _params),
    CommandKind.UPDATE_RELEASE_CHANNEL: ("updateReleaseChannel", _release_channel_arguments),
}


def _rated(name: str, device: OtbDevice, every_s: int) -> bool:
    """True at most once per ``every_s`` for this device (SET NX EX); True if Redis fails (better a
    repeated derived action than a box never told)."""
    try:
        return bool(redis_client().set(f"{seen_key()}:{name}:{device.id}", "1", nx=True, ex=every_s))
    except Exception:
        logger.warning("otbcompat %s rate key unavailable", name, exc_info=True)
        return True


def action_of_command(command: Command, *, base_url: str) -> Answer:
    """The todo answer for one of our commands; ActionUnavailable when it cannot be given."""
    if command.kind not in ACTIONS:
        raise ActionUnavailable(f"{command.kind} has no OverTheBox action")
    action, build = ACTIONS[command.kind]
    return {"id": str(command.id), "action": action, "arguments": build(command, base_url)}


def todo_next(*, device: OtbDevice, base_url: str) -> Answer:
    """The next action for the device (see the module docstring); writes only when it hands out a
    command (pending -> sent) or fails one it cannot map."""
    box = device.box
    if box is None:
        return wait_answer()
    unconfirmed = device.confirmed_at is None
    config_changed = bool(box.config_hash) and box.config_hash != box.applied_config_hash
    if unconfirmed and _rated("ask", device, setting("OTB_COMPAT_ASK_CONFIRMATION_EVERY_S")):
        return {"id": None, "action": "askServiceConfirmation", "arguments": {}}
    if (
        not unconfirmed
        and config_changed
        and _rated("configure", device, setting("OTB_COMPAT_CONFIGURE_EVERY_S"))
    ):
        return {"id": None, "action": "configure", "arguments": {}}
    while (command := command_take_next(box_id=box.pk)) is not None:
        try:
            return action_of_command(command, base_url=base_url)
        except ActionUnavailable as exc:
            logger.warning("command %s not given to OTB box %s: %s", command.pk, box.pk, exc)
            command_complete(box_id=box.pk, command_id=command.pk, ok=False, output=None, error=str(exc))
    return wait_answer()


def _details(value: Any) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise OtbBadRequest("details: a string (the action's output) is expected")
    if len(value) <= DETAILS_MAX:
        return value
    half = DETAILS_MAX // 2
    return f"{value[:half]}\n[… {len(value) - DETAILS_MAX} characters cut …]\n{value[-half:]}"


def action_result(*, device: OtbDevice, action_id: str, body: Any) -> Command:
    """Record the box's ``{"status": "done"|"error", "details": …}`` for one of its actions. The first
    result finishes the command (succeeded or failed); a later one is kept in
    ``result["late_reports"]`` and changes nothing (a failed sysupgrade is reported ``done`` after the
    next start: its success is judged by the version the box runs, never by ``done``). An id that is
    not one of this device's box's commands is 404 and nothing is touched."""
    if not isinstance(body, dict):
        raise OtbBadRequest("the body must be a JSON object with status and details")
    status = body.get("status")
    if status not in ("done", "error"):
        raise OtbBadRequest('status: "done" or "error" is expected')
    details = _details(body.get("details"))
    try:
        command_id = uuid.UUID(action_id)
    except ValueError as exc:
        raise OtbNotFound("no such action for this device") from exc
    if device.box_id is None:
        raise OtbNotFound("no such action for this device")
    report = {"status": status, "details": details}
    try:
        command = command_complete(
            box_id=device.box_id,
            command_id=command_id,
            ok=status == "done",
            output=report,
            error="" if status == "done" else (details[-4096:] or "the box reported an error"),
        )
        if command is None:  # already finished: keep the report, change nothing
            command = command_late_report(box_id=device.box_id, command_id=command_id, report=report)
    except (NotFound, InvalidInput, ValueError) as exc:
        raise OtbNotFound("no such action for this device") from exc
    return command
