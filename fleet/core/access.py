"""Organisation-scoped access: what a person (session or personal API token) may see and change.

Support staff see every organisation. A personal API token narrows its user to the token's
organisation. Objects outside what the caller may see are reported as not found (404), never as
forbidden, so ids of other customers' objects cannot be probed.

Two halves: edges resolve what the caller may *see* (``box_visible``, ``organization_visible``);
services decide what the actor may *do*, at their top, through one entry point (``authorize``,
``authorize_staff``, ``authorize_self``), so the minimum role of an action is written once.
"""

from __future__ import annotations

from typing import Any, cast
from uuid import UUID

from fleet.core.audit import Actor
from fleet.core.choices import Role
from fleet.core.errors import Forbidden, NotFound
from fleet.core.models import ApiToken, Box, Membership, Organization
from fleet.core.permissions import is_person

ROLE_RANK = {Role.VIEWER: 0, Role.ADMIN: 1, Role.OWNER: 2}
NOT_A_PERSON = "a user session or personal API token is required"
STAFF_ONLY = "support staff only"


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


def box_visible(actor: Actor, box_id: UUID | str) -> Box:
    """A box the actor may see (any role in its organisation; staff any box), else NotFound. What
    they may do with it is decided by the service they call."""
    return box_for(actor.user, box_id, Role.VIEWER, actor.token)


def organization_visible(actor: Actor, organization_id: UUID | str) -> Organization:
    """An organisation the actor may see (a member, through their token if any; staff any), else
    NotFound. What they may do in it is decided by the service they call."""
    return organization_for(actor.user, organization_id, Role.VIEWER, actor.token)


# --- what an actor may do: called by the services --------------------------------------------------


def _person_or_refuse(actor: Actor) -> None:
    """Machine principals (agents, servers) and anonymous actors never act for a person."""
    if not is_person(actor.user):
        raise Forbidden(NOT_A_PERSON)


def authorize(actor: Actor, *, organization_id: UUID | None, minimum: Role) -> str:
    """The actor's role in the organisation, at least ``minimum``: the check a service acting in an
    organisation makes at its top. Returns the role (owner for the system and for staff).

    The trusted system passes. A person is judged by ``require_role`` through the personal API token
    they called with (support staff pass as owners unless that token says otherwise): NotFound when
    the organisation is not theirs to see (or there is none: an unclaimed box), Forbidden when their
    role is too low. Anything else (an agent, a server, nobody) is Forbidden.
    """
    if actor.trusted:
        return Role.OWNER
    _person_or_refuse(actor)
    if organization_id is None:
        if is_staff(actor.user):
            return Role.OWNER
        raise NotFound("organization not found")
    return require_role(actor.user, organization_id, minimum, actor.token)


def authorize_staff(actor: Actor) -> None:
    """Support staff (or the trusted system) only: infrastructure, releases and rollouts, and the
    box actions that reach beyond one customer. Anyone else is Forbidden."""
    if actor.trusted:
        return
    _person_or_refuse(actor)
    if not is_staff(actor.user):
        raise Forbidden(STAFF_ONLY)


def authorize_self(actor: Actor, *, user_id: Any, not_found: str) -> None:
    """A person's own object (their personal API token): that person, support staff without a
    personal API token, or the system. Anyone else is told ``not_found`` (NotFound)."""
    if actor.trusted:
        return
    _person_or_refuse(actor)
    if actor.user.pk == user_id or (is_staff(actor.user) and actor.token is None):
        return
    raise NotFound(not_found)
