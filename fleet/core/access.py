"""Organisation-scoped access: what a person (session or personal API token) may see and change.

Support staff see every organisation. A personal API token narrows its user to the token's
organisation. Objects outside what the caller may see are reported as not found (404), never as
forbidden, so ids of other customers' objects cannot be probed.
"""

from __future__ import annotations

from typing import Any, cast
from uuid import UUID

from fleet.core.choices import Role
from fleet.core.errors import Forbidden, NotFound
from fleet.core.models import ApiToken, Box, Membership, Organization
from fleet.core.permissions import is_person

ROLE_RANK = {Role.VIEWER: 0, Role.ADMIN: 1, Role.OWNER: 2}


def _token(auth: Any) -> ApiToken | None:
    return auth if isinstance(auth, ApiToken) else None


def is_staff(user: Any) -> bool:
    return is_person(user) and bool(user.is_staff)


def visible_organization_ids(user: Any, auth: Any = None) -> list[UUID] | None:
    """Ids of organisations the caller may read; None means all (support staff)."""
    if not is_person(user):
        return []
    if is_staff(user):
        return None
    token = _token(auth)
    memberships = Membership.objects.filter(user=user)
    if token is not None:
        memberships = memberships.filter(organization_id=token.organization_id)
    return list(memberships.values_list("organization_id", flat=True))


def organization_role(user: Any, organization_id: UUID, auth: Any = None) -> str | None:
    if not is_person(user):
        return None
    token = _token(auth)
    if token is not None:
        if token.organization_id != organization_id:
            return None
        if hasattr(token, "member_role"):  # read with the token by the authentication
            return cast(str | None, token.member_role)
    return (
        Membership.objects.filter(user=user, organization_id=organization_id)
        .values_list("role", flat=True)
        .first()
    )


def require_role(user: Any, organization_id: UUID, minimum: Role, auth: Any = None) -> str:
    """The caller's role in the organisation, at least ``minimum``; staff pass as owners.

    Raises NotFound when the caller is not a member (the organisation is invisible to them) and
    Forbidden when the role is too low.
    """
    if is_staff(user) and _token(auth) is None:
        return Role.OWNER
    role = organization_role(user, organization_id, auth)
    if role is None:
        if is_staff(user):
            return Role.OWNER
        raise NotFound("organization not found")
    if ROLE_RANK[Role(role)] < ROLE_RANK[minimum]:
        raise Forbidden(f"this needs the {minimum} role or higher; you are {role}")
    return role


def organization_for(user: Any, organization_id: UUID | str, minimum: Role, auth: Any = None) -> Organization:
    token = _token(auth)
    try:
        wanted = UUID(str(organization_id))
        if token is not None and token.organization_id == wanted:
            organization = token.organization  # loaded with the token
        else:
            organization = Organization.objects.get(pk=wanted)
    except (Organization.DoesNotExist, ValueError) as exc:
        raise NotFound("organization not found") from exc
    require_role(user, organization.pk, minimum, auth)
    return organization


def box_for(user: Any, box_id: UUID | str, minimum: Role, auth: Any = None) -> Box:
    """A claimed box the caller may act on with at least ``minimum`` role."""
    try:
        box = Box.objects.select_related("organization", "server", "server__region").get(pk=UUID(str(box_id)))
    except (Box.DoesNotExist, ValueError) as exc:
        raise NotFound("box not found") from exc
    if is_staff(user):
        return box
    if box.organization_id is None:
        raise NotFound("box not found")
    require_role(user, box.organization_id, minimum, auth)
    return box
