"""The audit log writer. Every service that changes state on behalf of a person, an operator, a box
or the system calls ``audit_record`` inside its transaction, so the entry commits with the change."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from django.db import connection
from django.utils import timezone
from psycopg.types.json import Jsonb

from fleet.core.column_specs import model_spec
from fleet.core.models import ApiToken, AuditLog, Box, Organization
from fleet.core.request_context import current_request_id


@dataclass(frozen=True)
class Actor:
    """Who is acting, with what authorisation needs (``fleet.core.access.authorize``): a person
    (``user``, staff or not) and the personal API token they called with (``token``, which narrows
    them to its organisation); the trusted system (``Actor.system``: Celery tasks, management
    commands, seed data), the only actor that passes without a role; or a labelled machine principal
    (``box:SERIAL``, ``server:NAME``), recorded in the audit but never trusted for what a person
    does. Built at the edge from the request (``Actor.from_request``)."""

    label: str
    user: Any = None
    source_ip: str | None = None
    token: ApiToken | None = None
    trusted: bool = False

    @classmethod
    def system(cls, label: str = "system") -> Actor:
        """The trusted internal actor (``label`` says which: ``rollout``, ``cli:import_boxes``)."""
        return cls(label=label, trusted=True)

    @classmethod
    def for_user(cls, user: Any, source_ip: str | None = None, token: ApiToken | None = None) -> Actor:
        prefix = "staff" if getattr(user, "is_staff", False) else "user"
        return cls(label=f"{prefix}:{user.get_username()}", user=user, source_ip=source_ip, token=token)

    @classmethod
    def from_request(cls, request: Any) -> Actor:
        """The actor of an HTTP request: the user with the personal API token it came with (DRF's
        ``request.auth``), or the box/server principal's label."""
        user = getattr(request, "user", None)
        source_ip = request.META.get("REMOTE_ADDR") if hasattr(request, "META") else None
        if user is not None and hasattr(user, "get_username") and getattr(user, "is_authenticated", False):
            auth = getattr(request, "auth", None)
            return cls.for_user(user, source_ip, auth if isinstance(auth, ApiToken) else None)
        return cls(label=str(user) if user is not None else "anonymous", source_ip=source_ip)


# One entry, with SQL built once (the ORM compiled this insert on every state change); the live
# paths that write on their own connection batch ``audit_sql_row`` rows with it.
# ``audit_sql_row`` gives the values in the order of AUDIT_INSERT's columns.
AUDIT_INSERT = model_spec(
    AuditLog,
    "id",
    "created_at",
    "actor",
    "actor_label",
    "organization",
    "box",
    "action",
    "target_type",
    "target_id",
    "before",
    "after",
    "request_id",
    "source_ip",
)
AUDIT_INSERT_SQL = (
    f"INSERT INTO {AUDIT_INSERT.table} ({AUDIT_INSERT.column_list})"  # noqa: S608
    f" VALUES ({', '.join(['%s'] * len(AUDIT_INSERT.columns))})"
)


def audit_record(
    *,
    actor: Actor,
    action: str,
    organization: Organization | None = None,
    box: Box | None = None,
    target: Any = None,
    before: dict[str, Any] | None = None,
    after: dict[str, Any] | None = None,
) -> uuid.UUID:
    """Append one audit entry; call it inside the transaction of the change it records. Returns its id.
    Without ``organization``, the box's organisation is recorded."""
    organization_id = organization.pk if organization is not None else getattr(box, "organization_id", None)
    row = audit_sql_row(
        at=timezone.now(),
        actor=actor,
        action=action,
        organization_id=organization_id,
        box_id=box.pk if box is not None else None,
        target_type=target.__class__.__name__.lower() if target is not None else "",
        target_id=(getattr(target, "pk", "") or "") if target is not None else "",
        before=before,
        after=after,
    )
    with connection.cursor() as cursor:
        cursor.execute(AUDIT_INSERT_SQL, row)
    return cast(uuid.UUID, row[0])


def audit_sql_row(
    *,
    at: datetime,
    actor: Actor,
    action: str,
    organization_id: Any,
    box_id: Any,
    target_type: str,
    target_id: Any,
    before: dict[str, Any] | None,
    after: dict[str, Any] | None,
) -> tuple[Any, ...]:
    """Parameters of ``AUDIT_INSERT_SQL`` for one entry."""
    return (
        uuid.uuid4(),
        at,
        getattr(actor.user, "pk", None),
        actor.label[:150],
        organization_id,
        box_id,
        action,
        target_type,
        str(target_id),
        Jsonb(before) if before is not None else None,
        Jsonb(after) if after is not None else None,
        current_request_id(),
        actor.source_ip,
    )
