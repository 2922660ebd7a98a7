"""The organisation a person is looking at in the portal (the switcher keeps it in the session).

Everything here defers to ``fleet.core.access`` for who may see what; this module only remembers the
choice and falls back to the first organisation the person belongs to.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.http import HttpRequest

from fleet.core.access import ROLE_RANK, is_staff
from fleet.core.choices import Role
from fleet.core.models import Membership, Organization
from fleet.core.selectors import memberships_of_user
from frontend.selectors import organization_get

SESSION_KEY = "portal_organization_id"


@dataclass(frozen=True)
class PortalOrganization:
    """The organisation shown in the portal and the person's role in it (staff act as owners)."""

    organization: Organization
    role: str

    @property
    def can_edit(self) -> bool:
        return ROLE_RANK[Role(self.role)] >= ROLE_RANK[Role.ADMIN]

    @property
    def is_owner(self) -> bool:
        return self.role == Role.OWNER


def memberships_of(user: Any) -> list[Membership]:
    """The person's memberships with their organisations, in one query, cached on the user object."""
    cached = getattr(user, "_portal_memberships", None)
    if cached is None:
        cached = list(memberships_of_user(user=user))
        user._portal_memberships = cached
    return cached


def current_organization(request: HttpRequest) -> PortalOrganization | None:
    """The organisation chosen with the switcher, if the person may still see it; else their first."""
    if hasattr(request, "_portal_organization"):
        return request._portal_organization
    user = request.user
    chosen: PortalOrganization | None = None
    if user.is_authenticated:
        memberships = memberships_of(user)
        wanted = request.session.get(SESSION_KEY)
        for membership in memberships:
            if str(membership.organization_id) == wanted:
                chosen = PortalOrganization(membership.organization, membership.role)
        if chosen is None and wanted and is_staff(user):
            organization = organization_get(organization_id=wanted)
            if organization is not None:
                chosen = PortalOrganization(organization, Role.OWNER)
        if chosen is None and memberships:
            first = memberships[0]
            role = Role.OWNER if is_staff(user) else first.role
            chosen = PortalOrganization(first.organization, role)
        elif chosen is not None and is_staff(user):
            chosen = PortalOrganization(chosen.organization, Role.OWNER)
    request._portal_organization = chosen  # type: ignore[attr-defined]
    return chosen


def organization_choose(request: HttpRequest, organization: Organization) -> None:
    """Remember the organisation for this session (the caller has checked the person may see it)."""
    request.session[SESSION_KEY] = str(organization.pk)
    if hasattr(request, "_portal_organization"):
        del request._portal_organization
