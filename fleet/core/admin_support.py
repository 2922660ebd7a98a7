"""What the admin pages of every app share: the staff user as the audited actor, and running a
service over the selected objects of an admin action."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from fleet.core.audit import Actor
from fleet.core.errors import DomainError


class ReadOnlyAdmin(admin.ModelAdmin):
    """An admin page that lists and shows rows, never adds, changes or deletes them (records such as
    the audit log, or rows only services may write)."""

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


def staff_actor(request: HttpRequest) -> Actor:
    """The signed-in staff user (and address) as the actor of an audited change."""
    return Actor.for_user(request.user, request.META.get("REMOTE_ADDR"))


def run_for_each(
    modeladmin: admin.ModelAdmin,
    request: HttpRequest,
    queryset: QuerySet[Any] | Iterable[Any],
    verb: str,
    call: Callable[[Any], Any],
) -> None:
    """Run a service per selected object; report successes and each DomainError by object."""
    done, failed = 0, []
    for obj in queryset:
        try:
            call(obj)
            done += 1
        except DomainError as exc:
            failed.append(f"{obj}: {exc.message}")
    if done:
        modeladmin.message_user(request, f"{verb}: {done} done.", messages.SUCCESS)
    for failure in failed:
        modeladmin.message_user(request, f"{verb} refused for {failure}", messages.ERROR)
