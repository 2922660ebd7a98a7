"""Template context for every page: the current organisation, the switcher's choices, staff flag.

Lazy: a page that does not show the layout (an htmx fragment, the admin) runs no query for it.
"""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest
from django.utils.functional import SimpleLazyObject

from fleet.core.access import is_staff
from frontend.context import current_organization, memberships_of


def _switch_choices(request: HttpRequest) -> list[dict[str, Any]]:
    current = current_organization(request)
    current_id = current.organization.pk if current else None
    choices = [
        {"id": m.organization_id, "name": m.organization.name, "selected": m.organization_id == current_id}
        for m in memberships_of(request.user)
    ]
    if current is not None and not any(choice["selected"] for choice in choices):
        choices.append({"id": current_id, "name": current.organization.name, "selected": True})
    return choices


CONSOLE_PREFIX = "/console/"


def _console_section(path: str) -> str:
    """Which console menu entry a console page belongs to (for ``aria-current``)."""
    rest = path.removeprefix(CONSOLE_PREFIX)
    for section in ("search", "boxes", "rollouts", "releases", "audit", "otb-devices"):
        if rest.startswith(f"{section}/"):
            return "search" if section == "boxes" else section
    return "health" if not rest else ""


def portal(request: HttpRequest) -> dict[str, Any]:
    """``portal_menu`` is "console" for staff on console pages, and for staff who belong to no
    organisation anywhere (the customer menu would only lead to "not in an organisation" pages)."""
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return {"portal_org": None, "portal_switch": [], "portal_is_staff": False, "portal_menu": "portal"}
    staff = is_staff(user)
    in_console = request.path.startswith(CONSOLE_PREFIX)

    def menu() -> str:
        return "console" if staff and (in_console or current_organization(request) is None) else "portal"

    return {
        "portal_org": SimpleLazyObject(lambda: current_organization(request)),
        "portal_switch": SimpleLazyObject(lambda: _switch_choices(request)),
        "portal_is_staff": staff,
        "portal_menu": SimpleLazyObject(menu),
        "console_section": _console_section(request.path) if in_console else "",
    }
