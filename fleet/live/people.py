"""The portal's live websocket (``/ws/live/``): people watch boxes and organisations.

Authenticated by the Django session (``AuthMiddlewareStack`` around this route only); anonymous
sockets are accepted then closed with 4001 so the browser can tell "log in again" from a network
failure. The browser sends ``{"type": "subscribe", "box": "<uuid>"}`` or
``{"type": "subscribe", "organization": "<uuid>"}`` (and ``unsubscribe`` alike); each subscription is
authorised with the REST API's rules (``fleet.core.access``: viewer or above in the organisation, staff
any) and an object the person may not see gets an ``error`` frame with code ``not_found``, exactly
like a 404. Group messages of type ``people.event`` (telemetry, presence, events) are forwarded as
they arrive. Transport only: authorisation is a selector call in a thread.
"""

from __future__ import annotations

import json
import logging
import time
from importlib import import_module
from typing import Any
from uuid import UUID

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings
from django.contrib.auth import get_user_model

from fleet.core.access import box_for, organization_for
from fleet.core.choices import Role
from fleet.core.doorbells import box_group, organization_group, user_group
from fleet.core.errors import DomainError
from fleet.core.permissions import is_person

logger = logging.getLogger(__name__)

CLOSE_UNAUTHORIZED = 4001
CLOSE_INVALID_FRAMES = 4003
MAX_SUBSCRIPTIONS = 50
MAX_FRAME_BYTES = 4096
MAX_INVALID_FRAMES = 10
REAUTHORIZE_INTERVAL_S = 60.0


def _still_authorised(user: Any, session_key: str | None, subscriptions: dict[str, str]) -> list[str] | None:
    """The subscription keys the person may no longer see; None if the person may not use the socket
    at all any more (deactivated, or signed out: the session is gone)."""
    store = import_module(settings.SESSION_ENGINE).SessionStore()
    fresh = get_user_model().objects.filter(pk=user.pk, is_active=True).first()
    if fresh is None or (session_key is not None and not store.exists(session_key)):
        return None
    lost = []
    for key in subscriptions:
        scope_kind, _, object_id = key.partition(":")
        try:
            _authorised_group(fresh, scope_kind, object_id)
        except DomainError:
            lost.append(key)
    return lost


def _authorised_group(user: Any, scope_kind: str, object_id: str) -> str:
    """The group name for a box or organisation the user may view; DomainError otherwise."""
    if scope_kind == "box":
        box = box_for(user, object_id, Role.VIEWER)
        return box_group(box.pk)
    organization = organization_for(user, object_id, Role.VIEWER)
    return organization_group(organization.pk)


class PortalConsumer(AsyncWebsocketConsumer):
    """One browser tab's live feed; at most ``MAX_SUBSCRIPTIONS`` groups per socket."""

    groups: list[str] = []

    async def connect(self) -> None:
        self.user = self.scope.get("user")
        self.subscriptions: dict[str, str] = {}  # "box:<uuid>" -> group name
        self.invalid_frames = 0
        await self.accept()
        if not is_person(self.user) or not getattr(self.user, "is_active", False):
            await self.send_json({"type": "error", "code": "not_authenticated", "message": "log in first"})
            await self.close(code=CLOSE_UNAUTHORIZED)
            return
        self.checked_at = time.monotonic()
        await self.channel_layer.group_add(user_group(self.user.pk), self.channel_name)
        await self.send_json({"type": "ready", "max_subscriptions": MAX_SUBSCRIPTIONS})

    async def disconnect(self, code: int) -> None:
        groups = set(getattr(self, "subscriptions", {}).values())
        if hasattr(self, "checked_at"):
            groups.add(user_group(self.user.pk))
        for group in groups:
            await self.channel_layer.group_discard(group, self.channel_name)
        self.subscriptions = {}

    async def _reauthorize(self) -> bool:
        """Re-check every subscription with the REST API's rules; drop (and say so) what the person
        may no longer see; close with 4001 when they may not use the socket at all. True if open."""
        self.checked_at = time.monotonic()
        session = self.scope.get("session")
        session_key = getattr(session, "session_key", None)
        lost = await database_sync_to_async(_still_authorised)(
            self.user, session_key, dict(self.subscriptions)
        )
        if lost is None:
            await self.send_json({"type": "error", "code": "not_authenticated", "message": "log in again"})
            await self.close(code=CLOSE_UNAUTHORIZED)
            return False
        for key in lost:
            group = self.subscriptions.pop(key)
            if group not in self.subscriptions.values():
                await self.channel_layer.group_discard(group, self.channel_name)
            scope_kind, _, object_id = key.partition(":")
            await self.send_json({"type": "unsubscribed", scope_kind: object_id, "reason": "access_revoked"})
        return True

    async def people_reauthorize(self, event: dict[str, Any]) -> None:
        """A membership of this person was removed: re-check at once."""
        await self._reauthorize()

    async def send_json(self, body: dict[str, Any]) -> None:
        await self.send(text_data=json.dumps(body, separators=(",", ":"), default=str))

    async def _invalid(self, message: str, field: str | None = None) -> None:
        self.invalid_frames += 1
        body: dict[str, Any] = {"type": "error", "code": "invalid", "message": message}
        if field:
            body["field"] = field
        await self.send_json(body)
        if self.invalid_frames >= MAX_INVALID_FRAMES:
            await self.close(code=CLOSE_INVALID_FRAMES)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if text_data is None:
            await self._invalid("send JSON text frames")
            return
        if len(text_data) > MAX_FRAME_BYTES:
            await self._invalid(f"frames are at most {MAX_FRAME_BYTES} bytes")
            return
        try:
            frame = json.loads(text_data)
        except ValueError:
            await self._invalid("frame is not JSON")
            return
        if not isinstance(frame, dict):
            await self._invalid("frame must be an object")
            return
        kind = frame.get("type")
        if kind == "ping":
            await self.send_json({"type": "pong"})
        elif kind in {"subscribe", "unsubscribe"}:
            await self._subscription(kind, frame)
        else:
            await self._invalid("type must be subscribe, unsubscribe or ping", "type")

    async def _subscription(self, kind: str, frame: dict[str, Any]) -> None:
        scopes = [name for name in ("box", "organization") if name in frame]
        extra = set(frame) - {"type", "box", "organization"}
        if len(scopes) != 1 or extra:
            await self._invalid("give exactly one of box or organization", "box")
            return
        scope_kind = scopes[0]
        raw = frame[scope_kind]
        try:
            object_id = str(UUID(str(raw))) if isinstance(raw, str) else None
        except ValueError:
            object_id = None
        if object_id is None:
            await self._invalid(f"{scope_kind} must be a UUID", scope_kind)
            return
        key = f"{scope_kind}:{object_id}"
        if kind == "unsubscribe":
            group = self.subscriptions.pop(key, None)
            if group is not None and group not in self.subscriptions.values():
                await self.channel_layer.group_discard(group, self.channel_name)
            await self.send_json({"type": "unsubscribed", scope_kind: object_id})
            return
        if key not in self.subscriptions:
            if len(self.subscriptions) >= MAX_SUBSCRIPTIONS:
                await self.send_json(
                    {
                        "type": "error",
                        "code": "too_many_subscriptions",
                        "message": f"at most {MAX_SUBSCRIPTIONS} subscriptions per socket",
                        "field": scope_kind,
                    }
                )
                return
            try:
                group = await database_sync_to_async(_authorised_group)(self.user, scope_kind, object_id)
            except DomainError:
                # Forbidden and NotFound look the same: ids of other customers cannot be probed.
                await self.send_json(
                    {
                        "type": "error",
                        "code": "not_found",
                        "message": f"{scope_kind} not found",
                        "field": scope_kind,
                    }
                )
                return
            await self.channel_layer.group_add(group, self.channel_name)
            self.subscriptions[key] = group
        await self.send_json({"type": "subscribed", scope_kind: object_id})

    async def people_event(self, event: dict[str, Any]) -> None:
        """A broadcast from ``fleet.core.doorbells.broadcast_to_people``: forward its payload as is."""
        # Access can also end without a doorbell (a role lowered in the admin, a session signed out
        # elsewhere): re-check at most every REAUTHORIZE_INTERVAL_S while events flow.
        if time.monotonic() - self.checked_at >= REAUTHORIZE_INTERVAL_S and not await self._reauthorize():
            return
        payload = event.get("payload")
        if isinstance(payload, dict):
            await self.send_json(payload)
