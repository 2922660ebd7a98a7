"""Admin for releases and rollouts. Every action calls the same service as the REST API; a domain
error becomes an admin message instead of a 500."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils.html import format_html_join

from fleet.core.audit import Actor
from fleet.core.errors import DomainError
from fleet.firmware import selectors, services
from fleet.firmware.models import BoxUpgradePolicy, Release, Rollout, Upgrade


def _each(
    request: HttpRequest, queryset: QuerySet[Any], verb: str, call: Callable[[Actor, Any], Any]
) -> None:
    actor = Actor.for_user(request.user, request.META.get("REMOTE_ADDR"))
    done = 0
    for obj in queryset:
        try:
            call(actor, obj)
            done += 1
        except DomainError as exc:
            messages.error(request, f"{obj}: {exc.message}")
    if done:
        messages.success(request, f"{verb} {done}")


@admin.register(Release)
class ReleaseAdmin(admin.ModelAdmin):
    list_display = ["version", "channel", "state", "size", "published_at", "created_at"]
    list_filter = ["state", "channel"]
    search_fields = ["version", "sha256"]
    actions = ["publish", "withdraw"]
    # Image fields change only through the services (which hash, check and audit).
    readonly_fields = [
        "id",
        "state",
        "image",
        "size",
        "sha256",
        "published_at",
        "withdrawn_at",
        "withdrawn_reason",
        "created_by",
        "created_at",
        "updated_at",
    ]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # created through the API or `manage.py sign_firmware --create` (hashing the image)

    def save_model(self, request: HttpRequest, obj: Release, form: Any, change: bool) -> None:
        try:
            services.release_update(
                actor=Actor.for_user(request.user),
                release=obj,
                notes=form.cleaned_data.get("notes"),
                **(
                    {
                        name: form.cleaned_data.get(name)
                        for name in ("signature", "hardware_models", "channel", "external_url")
                        if name in form.changed_data
                    }
                ),
            )
        except DomainError as exc:
            messages.error(request, exc.message)

    @admin.action(description="Publish the selected releases")
    def publish(self, request: HttpRequest, queryset: QuerySet[Release]) -> None:
        _each(
            request, queryset, "Published", lambda actor, r: services.release_publish(actor=actor, release=r)
        )

    @admin.action(description="Withdraw the selected releases (aborts their rollouts)")
    def withdraw(self, request: HttpRequest, queryset: QuerySet[Release]) -> None:
        _each(
            request,
            queryset,
            "Withdrew",
            lambda actor, r: services.release_withdraw(
                actor=actor, release=r, reason="withdrawn in the admin"
            ),
        )


@admin.register(Rollout)
class RolloutAdmin(admin.ModelAdmin):
    list_display = ["name", "release", "state", "current_phase", "total", "pause_reason", "created_at"]
    list_filter = ["state"]
    search_fields = ["name", "release__version"]
    list_select_related = ["release"]
    actions = ["start", "pause", "resume", "abort", "retry_failed"]
    readonly_fields = [f.name for f in Rollout._meta.fields] + ["progress"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # created through the API, after a preview

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return obj is None  # the list and its actions; the detail page is read-only

    @admin.display(description="progress")
    def progress(self, rollout: Rollout) -> str:
        data = selectors.rollout_progress(rollout=rollout)
        rows = [(state, count) for state, count in data["counts"].items() if count]
        rows += [(f"{r['state']}: {r['reason']}", r["count"]) for r in data["failure_reasons"]]
        return format_html_join("", "<div>{}: {}</div>", rows)

    @admin.action(description="Start")
    def start(self, request: HttpRequest, queryset: QuerySet[Rollout]) -> None:
        _each(request, queryset, "Started", lambda actor, r: services.rollout_start(actor=actor, rollout=r))

    @admin.action(description="Pause")
    def pause(self, request: HttpRequest, queryset: QuerySet[Rollout]) -> None:
        _each(request, queryset, "Paused", lambda actor, r: services.rollout_pause(actor=actor, rollout=r))

    @admin.action(description="Resume")
    def resume(self, request: HttpRequest, queryset: QuerySet[Rollout]) -> None:
        _each(request, queryset, "Resumed", lambda actor, r: services.rollout_resume(actor=actor, rollout=r))

    @admin.action(description="Abort")
    def abort(self, request: HttpRequest, queryset: QuerySet[Rollout]) -> None:
        _each(request, queryset, "Aborted", lambda actor, r: services.rollout_abort(actor=actor, rollout=r))

    @admin.action(description="Retry failed boxes")
    def retry_failed(self, request: HttpRequest, queryset: QuerySet[Rollout]) -> None:
        _each(
            request,
            queryset,
            "Retried failed boxes of",
            lambda actor, r: services.upgrades_retry_failed(actor=actor, rollout=r),
        )


@admin.register(Upgrade)
class UpgradeAdmin(admin.ModelAdmin):
    list_display = ["box", "release", "rollout", "phase", "state", "reason", "state_changed_at"]
    list_filter = ["state"]
    search_fields = ["box__serial", "release__version"]
    list_select_related = ["box", "release", "rollout"]
    raw_id_fields = ["box", "rollout", "release"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(BoxUpgradePolicy)
class BoxUpgradePolicyAdmin(admin.ModelAdmin):
    list_display = ["box", "window_days", "window_start", "window_end", "updated_at"]
    search_fields = ["box__serial"]
    raw_id_fields = ["box"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # customers edit it in the portal/API (box_upgrade_policy_update, audited)
