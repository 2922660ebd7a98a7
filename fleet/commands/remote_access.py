"""Remote access to a stock OverTheBox box: a reverse SSH session from the box to our bastion, for a
limited time, asked for by an admin (or staff) and approved by an owner of the box's organisation.

1. ``remote_access_request``: an admin (or staff) asks, naming the box's port to reach, the SSH key to
   let in and how long (at most ``REMOTE_ACCESS_MAX_DURATION_S``);
2. ``remote_access_approve``: an owner approves (staff cannot approve for the customer); the session
   gets a bastion port and its clock starts; the box gets a ``remote_access_prepare`` command
   (``remoteAccessPrepare``), which makes it send its host key;
3. ``remote_access_device_key`` (the box's ``POST remote_accesses/{id}/keys``): the key is kept and the box
   gets ``remote_access_connect`` (``remoteAccessConnect``: the bastion's address and host key, the
   port to forward, the key to let in): it opens ``ssh -R`` to the bastion;
4. ``remote_access_close`` (admin, or staff) or ``remote_accesses_expire`` (beat, every minute) end it:
   the box gets ``remote_access_disconnect`` (``remoteAccessDisconnect``).

Every step is in the audit log. The bastion: ``REMOTE_ACCESS_BASTION_HOST``, its SSH host key
``REMOTE_ACCESS_BASTION_HOST_KEY``, session ports ``REMOTE_ACCESS_PORT_MIN``..``REMOTE_ACCESS_PORT_MAX``.
"""

from __future__ import annotations

import logging
import re
from datetime import datetime, timedelta
from typing import Any, cast
from uuid import UUID

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import QuerySet
from django.utils import timezone

from fleet.commands.choices import (
    OPEN_REMOTE_ACCESS_STATES,
    CommandKind,
    RemoteAccessState,
)
from fleet.commands.models import Command, RemoteAccess
from fleet.commands.services import command_create
from fleet.core.access import authorize, authorize_staff, organization_role
from fleet.core.audit import Actor, audit_record
from fleet.core.choices import BoxProtocol, BoxState, Role
from fleet.core.errors import Conflict, Forbidden, InvalidInput, NotFound
from fleet.core.models import Box

logger = logging.getLogger(__name__)

R = RemoteAccessState
DEFAULT_DURATION_S = 24 * 3600
MIN_DURATION_S = 300
# An OpenSSH public key line. The box pastes it between single quotes into ``uci batch``: no quote,
# no newline, nothing but the key's own characters (see docs/otb-protocol.md).
PUBLIC_KEY = re.compile(
    r"^(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp(256|384|521)|sk-ssh-ed25519@openssh\.com) "
    r"[A-Za-z0-9+/]{16,2048}={0,3}( [A-Za-z0-9@._+:-]{1,100})?$"
)
HOST = re.compile(r"^[A-Za-z0-9.:-]{1,253}$")


def remote_access_setting(name: str) -> Any:
    return cast(dict[str, Any], settings.OTB)[name]


def _key_clean(value: Any, field: str) -> str:
    if not isinstance(value, str) or not PUBLIC_KEY.match(value.strip()):
        raise InvalidInput("an OpenSSH public key line, such as 'ssh-ed25519 AAAA… name'", field=field)
    return value.strip()


def remote_access_request(
    *, actor: Actor, box: Box, exposed_port: Any, public_key: Any, duration_s: Any = None
) -> RemoteAccess:
    """Ask for a session to ``box`` (admin of its organisation, or staff); it waits for an owner's
    approval. Stock OverTheBox boxes only (``otb-agent`` has no reverse SSH)."""
    authorize(actor, organization_id=box.organization_id, minimum=Role.ADMIN)
    if type(exposed_port) is not int or not 1 <= exposed_port <= 65535:
        raise InvalidInput(
            "a TCP port of the box, 1 to 65535 (22: SSH, 443: its web interface)", field="exposed_port"
        )
    key = _key_clean(public_key, "public_key")
    longest = int(remote_access_setting("REMOTE_ACCESS_MAX_DURATION_S"))
    duration = DEFAULT_DURATION_S if duration_s is None else duration_s
    if type(duration) is not int or not MIN_DURATION_S <= duration <= longest:
        raise InvalidInput(f"seconds, from {MIN_DURATION_S} to {longest}", field="duration_s")
    if box.protocol != BoxProtocol.OTB:
        raise InvalidInput("remote access needs a box running the OverTheBox firmware", field="box")
    if box.state != BoxState.CLAIMED:
        raise Conflict("only a claimed box can be reached", field="box")
    with transaction.atomic():
        access = RemoteAccess.objects.create(
            box=box,
            exposed_port=exposed_port,
            public_key=key,
            duration_s=duration,
            requested_by=actor.user if getattr(actor.user, "pk", None) else None,
        )
        audit_record(
            actor=actor,
            action="remote_access.request",
            box=box,
            target=access,
            after={"exposed_port": exposed_port, "duration_s": duration, "public_key": key},
        )
    return access


def _locked(access: RemoteAccess) -> RemoteAccess:
    return RemoteAccess.objects.select_for_update().select_related("box").get(pk=access.pk)


def _bastion() -> tuple[str, str]:
    host = str(remote_access_setting("REMOTE_ACCESS_BASTION_HOST") or "")
    host_key = str(remote_access_setting("REMOTE_ACCESS_BASTION_HOST_KEY") or "")
    if not host or not HOST.match(host) or not PUBLIC_KEY.match(host_key):
        raise Conflict(
            "remote access is not set up: OTB_REMOTE_ACCESS_BASTION_HOST and "
            "OTB_REMOTE_ACCESS_BASTION_HOST_KEY are needed",
            field="state",
        )
    if len(host_key.split()) == 2:
        # The box writes known_hosts from "<key minus its last word>": a key needs its comment.
        host_key += " otb-bastion"
    return host, host_key


def _free_port() -> int:
    low = int(remote_access_setting("REMOTE_ACCESS_PORT_MIN"))
    high = int(remote_access_setting("REMOTE_ACCESS_PORT_MAX"))
    taken = set(
        RemoteAccess.objects.filter(
            state__in=OPEN_REMOTE_ACCESS_STATES, bastion_port__isnull=False
        ).values_list("bastion_port", flat=True)
    )
    for port in range(low, high + 1):
        if port not in taken:
            return port
    raise Conflict("every bastion port is in use; close a session or try later", field="state")


def _command(box: Box, kind: str, params: dict[str, Any], until: datetime | None) -> Command:
    remaining = int((until - timezone.now()).total_seconds()) if until else 24 * 3600
    ttl = max(60, min(remaining, 24 * 3600))
    return command_create(
        actor=Actor.system("remote-access"), box=box, kind=kind, params=params, ttl_s=ttl, internal=True
    )


def remote_access_approve(*, actor: Actor, access: RemoteAccess) -> RemoteAccess:
    """An owner of the box's organisation (only: staff cannot consent for the customer) approves the
    request: its clock starts, it gets a bastion port, and the box is asked to prepare."""
    organization_id = cast(UUID, access.box.organization_id)
    authorize(actor, organization_id=organization_id, minimum=Role.VIEWER)  # NotFound when not theirs
    if not actor.trusted and organization_role(actor.user, organization_id, actor.token) != Role.OWNER:
        raise Forbidden("only an owner of the box's organisation can approve a remote access", field="state")
    _bastion()
    for attempt in range(3):
        try:
            with transaction.atomic():
                locked = _locked(access)
                if locked.state != R.REQUESTED:
                    raise Conflict(f"a {locked.state} remote access cannot be approved", field="state")
                now = timezone.now()
                locked.state, locked.approved_at = R.APPROVED, now
                locked.approved_by = actor.user
                locked.expires_at = now + timedelta(seconds=locked.duration_s)
                locked.bastion_port = _free_port()
                locked.save()
                audit_record(
                    actor=actor,
                    action="remote_access.approve",
                    box=locked.box,
                    target=locked,
                    after={"expires_at": locked.expires_at.isoformat(), "bastion_port": locked.bastion_port},
                )
                _command(
                    locked.box,
                    CommandKind.REMOTE_ACCESS_PREPARE,
                    {"remote_access_id": str(locked.pk)},
                    locked.expires_at,
                )
            return locked
        except IntegrityError:
            # Two approvals took the same free port at once: the constraint refused one; try again.
            if attempt == 2:
                raise Conflict("no bastion port could be taken; try again", field="state") from None
    raise AssertionError("unreachable")


def remote_access_reject(*, actor: Actor, access: RemoteAccess) -> RemoteAccess:
    """Refuse a request (admin of the organisation, or staff)."""
    authorize(actor, organization_id=access.box.organization_id, minimum=Role.ADMIN)
    with transaction.atomic():
        locked = _locked(access)
        if locked.state != R.REQUESTED:
            raise Conflict(f"a {locked.state} remote access cannot be rejected", field="state")
        locked.state, locked.ended_at = R.REJECTED, timezone.now()
        locked.save(update_fields=["state", "ended_at"])
        audit_record(actor=actor, action="remote_access.reject", box=locked.box, target=locked)
    return locked


def _end(locked: RemoteAccess, state: str) -> None:
    was_open = locked.is_open
    locked.state, locked.ended_at = state, timezone.now()
    locked.save(update_fields=["state", "ended_at"])
    if was_open:
        _command(locked.box, CommandKind.REMOTE_ACCESS_DISCONNECT, {"remote_access_id": str(locked.pk)}, None)


def remote_access_close(*, actor: Actor, access: RemoteAccess) -> RemoteAccess:
    """End an open session (or withdraw a request) before its time (admin, or staff): the box is told
    to disconnect."""
    authorize(actor, organization_id=access.box.organization_id, minimum=Role.ADMIN)
    with transaction.atomic():
        locked = _locked(access)
        if locked.state not in (R.REQUESTED, *OPEN_REMOTE_ACCESS_STATES):
            raise Conflict(f"a {locked.state} remote access is over already", field="state")
        _end(locked, R.CLOSED)
        audit_record(actor=actor, action="remote_access.close", box=locked.box, target=locked)
    return locked


def remote_access_device_key(*, box: Box, remote_access_id: Any, public_key: Any) -> RemoteAccess:
    """The box sends its SSH host key for an approved session of its own: kept, and the box is told to
    connect. NotFound for another box's session; InvalidInput for a bad key; Conflict when the
    session is not waiting for the key (closed, expired, not approved)."""
    key = _key_clean(public_key, "public_key")
    host, host_key = _bastion()
    with transaction.atomic():
        try:
            locked = (
                RemoteAccess.objects.select_for_update()
                .select_related("box")
                .get(pk=UUID(str(remote_access_id)), box=box)
            )
        except (RemoteAccess.DoesNotExist, ValueError) as exc:
            raise NotFound("remote access not found", field="remote_access_id") from exc
        if locked.state not in OPEN_REMOTE_ACCESS_STATES:
            raise Conflict(f"this remote access is {locked.state}", field="remote_access_id")
        locked.device_public_key = key
        first = locked.state == R.APPROVED
        locked.state = R.CONNECTED
        locked.connected_at = locked.connected_at or timezone.now()
        locked.save(update_fields=["device_public_key", "state", "connected_at"])
        audit_record(
            actor=Actor(label=f"box:{box.serial}"),
            action="remote_access.device_key",
            box=box,
            target=locked,
            after={"device_public_key": key},
        )
        if first:
            _command(
                box,
                CommandKind.REMOTE_ACCESS_CONNECT,
                {
                    "remote_access_id": str(locked.pk),
                    "ip": host,
                    "port": locked.bastion_port,
                    "forwarded_port": locked.exposed_port,
                    "server_public_key": host_key,
                    "remote_public_key": locked.public_key,
                },
                locked.expires_at,
            )
    return locked


def remote_accesses_expire(*, now: datetime | None = None) -> int:
    """End every open session past ``expires_at`` (the box is told to disconnect) and every request
    left unapproved for ``REMOTE_ACCESS_MAX_DURATION_S``; returns how many. Each in its own short
    transaction, rows another worker holds skipped."""
    now = now or timezone.now()
    stale_requests = now - timedelta(seconds=int(remote_access_setting("REMOTE_ACCESS_MAX_DURATION_S")))
    ids = list(
        RemoteAccess.objects.filter(state__in=OPEN_REMOTE_ACCESS_STATES, expires_at__lte=now).values_list(
            "pk", flat=True
        )[:500]
    ) + list(
        RemoteAccess.objects.filter(state=R.REQUESTED, requested_at__lte=stale_requests).values_list(
            "pk", flat=True
        )[:500]
    )
    ended = 0
    for access_id in ids:
        with transaction.atomic():
            locked = (
                RemoteAccess.objects.select_for_update(skip_locked=True)
                .select_related("box")
                .filter(pk=access_id)
                .first()
            )
            if locked is None or locked.state not in (R.REQUESTED, *OPEN_REMOTE_ACCESS_STATES):
                continue
            _end(locked, R.EXPIRED)
            audit_record(
                actor=Actor.system("remote-access"),
                action="remote_access.expire",
                box=locked.box,
                target=locked,
            )
            ended += 1
    if ended:
        logger.info("remote accesses expired", extra={"count": ended})
    return ended


def remote_accesses_open(*, actor: Actor) -> QuerySet[RemoteAccess]:
    """Every open session (approved or connected, not past ``expires_at``), for the bastion to admit:
    staff (or the system) only."""
    authorize_staff(actor)
    return (
        RemoteAccess.objects.filter(state__in=OPEN_REMOTE_ACCESS_STATES, expires_at__gt=timezone.now())
        .select_related("box", "requested_by", "approved_by")
        .order_by("expires_at", "id")
    )


def remote_access_list_for_box(*, box_id: UUID) -> QuerySet[RemoteAccess]:
    return RemoteAccess.objects.filter(box_id=box_id).select_related("requested_by", "approved_by")


def remote_access_get_for_box(*, box_id: UUID, remote_access_id: Any) -> RemoteAccess:
    try:
        return (
            remote_access_list_for_box(box_id=box_id)
            .select_related("box")
            .get(pk=UUID(str(remote_access_id)))
        )
    except (RemoteAccess.DoesNotExist, ValueError) as exc:
        raise NotFound("remote access not found", field="remote_access_id") from exc
