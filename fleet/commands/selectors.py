"""Reads for box commands, scoped by fleet.core.access."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from django.db.models import QuerySet

from fleet.commands.models import Command
from fleet.core.access import require_role
from fleet.core.choices import Role
from fleet.core.errors import NotFound


def command_list_for_box(*, box_id: UUID, filters: dict[str, Any] | None = None) -> QuerySet[Command]:
    """A box's commands, newest first, optionally filtered by ``state`` and ``kind``."""
    filters = filters or {}
    queryset = (
        Command.objects.filter(box_id=box_id).select_related("created_by").order_by("-created_at", "-id")
    )
    if filters.get("state"):
        queryset = queryset.filter(state=filters["state"])
    if filters.get("kind"):
        queryset = queryset.filter(kind=filters["kind"])
    return queryset


def command_get_for_user(*, user: Any, command_id: UUID | str, auth: Any = None) -> Command:
    """A command the caller may see (viewer+ of its organisation, staff any); NotFound otherwise,
    including for other organisations' commands."""
    try:
        command = Command.objects.select_related("box", "created_by").get(pk=UUID(str(command_id)))
    except (Command.DoesNotExist, ValueError) as exc:
        raise NotFound("command not found") from exc
    try:
        require_role(user, command.organization_id, Role.VIEWER, auth)
    except NotFound as exc:
        raise NotFound("command not found") from exc
    return command
