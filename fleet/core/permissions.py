"""Who may call what. Organisation-level checks (role in the box's organisation) are in
``fleet.core.access``; these classes only sort callers by kind."""

from __future__ import annotations

from typing import Any

from rest_framework.permissions import BasePermission

from fleet.core.authentication import AgentPrincipal


def is_person(user: Any) -> bool:
    return bool(
        user is not None
        and getattr(user, "is_authenticated", False)
        and not getattr(user, "is_machine", False)
    )


class IsAgent(BasePermission):
    message = "an agent token is required"

    def has_permission(self, request: Any, view: Any) -> bool:
        return isinstance(request.user, AgentPrincipal)


class IsPerson(BasePermission):
    message = "a user session or personal API token is required"

    def has_permission(self, request: Any, view: Any) -> bool:
        return is_person(request.user)


class IsStaff(BasePermission):
    message = "support staff only"

    def has_permission(self, request: Any, view: Any) -> bool:
        return is_person(request.user) and bool(request.user.is_staff)
