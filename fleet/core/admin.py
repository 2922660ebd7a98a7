"""Django admin for support staff: organisations and people, tokens (hashes never shown), boxes with
their public address and support actions, the CSV import, and the read-only audit log.

Every change goes through the same services as the API, with the staff user as the audited actor.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db.models import F, Q, QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import path

from fleet.core.audit import Actor
from fleet.core.errors import DomainError
from fleet.core.models import ApiToken, AuditLog, Box, EnrollmentToken, Invitation, Membership, Organization
from fleet.core.selectors import boxes_annotated
from fleet.core.services import api_token_revoke, box_update, boxes_import, enrollment_token_revoke

IMPORT_MAX_BYTES = 20 * 1024 * 1024


def _actor(request: HttpRequest) -> Actor:
    return Actor.for_user(request.user, request.META.get("REMOTE_ADDR"))


def _each(
    modeladmin: admin.ModelAdmin,
    request: HttpRequest,
    queryset: QuerySet[Any],
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


# -- organisations and people ----------------------------------------------------------------------


class MembershipInline(admin.TabularInline):
    model = Membership
    extra = 0
    fields = ["user", "role", "created_at"]
    readonly_fields = ["created_at"]
    raw_id_fields = ["user"]


@admin.register(Organization)
class OrganizationAdmin(admin.ModelAdmin):
    list_display = ["name", "slug", "preferred_region", "timezone", "created_at"]
    search_fields = ["name", "slug"]
    list_select_related = ["preferred_region"]
    inlines = [MembershipInline]
    readonly_fields = ["id", "created_at"]


@admin.register(Membership)
class MembershipAdmin(admin.ModelAdmin):
    list_display = ["user", "organization", "role", "created_at"]
    list_filter = ["role", "organization"]
    search_fields = ["user__email", "user__username", "organization__name"]
    list_select_related = ["user", "organization"]
    raw_id_fields = ["user"]


@admin.register(Invitation)
class InvitationAdmin(admin.ModelAdmin):
    list_display = ["email", "organization", "role", "created_at", "expires_at", "accepted_at", "revoked_at"]
    list_filter = ["role", "organization"]
    search_fields = ["email", "organization__name"]
    list_select_related = ["organization"]
    exclude = ["token_hash"]
    readonly_fields = [
        "id",
        "organization",
        "email",
        "role",
        "invited_by",
        "created_at",
        "expires_at",
        "accepted_at",
        "accepted_by",
        "revoked_at",
    ]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False


class TokenAdminBase(admin.ModelAdmin):
    """Tokens are issued by the API or the commands (the value is shown once); here they are only
    listed and revoked. The hash column is never displayed."""

    exclude = ["token_hash"]
    actions = ["revoke"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def revoke_one(self, request: HttpRequest, token: Any) -> None:
        raise NotImplementedError

    @admin.action(description="Revoke selected tokens")
    def revoke(self, request: HttpRequest, queryset: QuerySet[Any]) -> None:
        _each(self, request, queryset, "revoke", lambda token: self.revoke_one(request, token))


@admin.register(ApiToken)
class ApiTokenAdmin(TokenAdminBase):
    list_display = ["name", "token_prefix", "user", "organization", "created_at", "expires_at", "revoked_at"]
    list_filter = ["organization"]
    search_fields = ["name", "token_prefix", "user__email", "organization__name"]
    list_select_related = ["user", "organization"]

    def revoke_one(self, request: HttpRequest, token: Any) -> None:
        api_token_revoke(actor=_actor(request), token=token)


@admin.register(EnrollmentToken)
class EnrollmentTokenAdmin(TokenAdminBase):
    list_display = ["name", "token_prefix", "organization", "single_use", "uses", "expires_at", "revoked_at"]
    list_filter = ["organization", "single_use"]
    search_fields = ["name", "token_prefix", "organization__name"]
    list_select_related = ["organization"]

    def revoke_one(self, request: HttpRequest, token: Any) -> None:
        enrollment_token_revoke(actor=_actor(request), token=token)


# -- boxes -----------------------------------------------------------------------------------------


class DriftFilter(admin.SimpleListFilter):
    title = "config drift"
    parameter_name = "drift"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("yes", "Drifting"), ("no", "In sync")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Box]) -> QuerySet[Box]:
        drifting = ~Q(config_hash="") & ~Q(config_hash=F("applied_config_hash"))
        if self.value() == "yes":
            return queryset.filter(drifting)
        if self.value() == "no":
            return queryset.exclude(drifting)
        return queryset


class BoxImportForm(forms.Form):
    file = forms.FileField(help_text="CSV with header serial,model,mac,factory_secret,claim_code")


class BoxChangeForm(forms.ModelForm):
    class Meta:
        model = Box
        fields = ["name", "tags"]


@admin.register(Box)
class BoxAdmin(admin.ModelAdmin):
    change_list_template = "admin/fleet/box/change_list.html"
    form = BoxChangeForm
    list_display = [
        "serial",
        "name",
        "organization",
        "state",
        "server",
        "region",
        "public_ip",
        "firmware_version",
        "drift",
        "claimed_at",
    ]
    list_filter = [
        "state",
        DriftFilter,
        ("server__region", admin.RelatedOnlyFieldListFilter),
        ("server", admin.RelatedOnlyFieldListFilter),
        ("organization", admin.RelatedOnlyFieldListFilter),
        "firmware_version",
    ]
    search_fields = ["serial", "mac", "name", "organization__name"]
    search_help_text = "serial, MAC, name, organisation, or public IP (prefix)"
    list_select_related = ["organization", "server", "server__region"]
    readonly_fields = [
        "id",
        "serial",
        "model",
        "mac",
        "state",
        "organization",
        "server",
        "tunnel_port",
        "public_ip",
        "wg_public_key",
        "wan_policy",
        "config_hash",
        "applied_config_hash",
        "applied_at",
        "apply_error",
        "firmware_version",
        "agent_version",
        "release_channel",
        "enrolled_at",
        "claimed_at",
        "decommissioned_at",
        "created_at",
        "updated_at",
    ]
    actions = ["reassign_server", "release_addresses", "revoke_credentials", "decommission"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Box]:
        return boxes_annotated(super().get_queryset(request))

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[Box], search_term: str
    ) -> tuple[QuerySet[Box], bool]:
        results, may_have_duplicates = super().get_search_results(request, queryset, search_term)
        term = search_term.strip()
        if term and all(ch in "0123456789abcdefABCDEF.:/" for ch in term):
            results = results | queryset.filter(public_ipv4__startswith=term.split("/")[0])  # type: ignore[misc]
        return results, may_have_duplicates

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # boxes come from the factory import (button on the list) or from enrollment

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # decommission instead: addresses and credentials must be released

    @admin.display(description="public IP", ordering="public_ipv4")
    def public_ip(self, box: Box) -> str:
        return getattr(box, "public_ipv4", None) or "-"

    @admin.display(description="region", ordering="server__region__code")
    def region(self, box: Box) -> str:
        return box.server.region.code if box.server_id and box.server else "-"

    @admin.display(description="drift", boolean=True)
    def drift(self, box: Box) -> bool:
        return box.config_drift

    def save_model(self, request: HttpRequest, obj: Box, form: Any, change: bool) -> None:
        try:
            box_update(actor=_actor(request), box=obj, name=obj.name, tags=list(obj.tags))
        except DomainError as exc:
            self.message_user(request, exc.message, messages.ERROR)

    @admin.action(description="Reassign to the best server")
    def reassign_server(self, request: HttpRequest, queryset: QuerySet[Box]) -> None:
        from provisioning.services import box_reassign_server

        _each(
            self,
            request,
            queryset,
            "reassign",
            lambda box: box_reassign_server(actor=_actor(request), box=box),
        )

    @admin.action(description="Release addresses")
    def release_addresses(self, request: HttpRequest, queryset: QuerySet[Box]) -> None:
        from provisioning.services import box_release_addresses

        _each(
            self,
            request,
            queryset,
            "release",
            lambda box: box_release_addresses(actor=_actor(request), box=box),
        )

    @admin.action(description="Revoke credentials (agent and tunnels)")
    def revoke_credentials(self, request: HttpRequest, queryset: QuerySet[Box]) -> None:
        from provisioning.services import box_revoke_credentials

        _each(
            self,
            request,
            queryset,
            "revoke",
            lambda box: box_revoke_credentials(actor=_actor(request), box=box),
        )

    @admin.action(description="Decommission (irreversible)")
    def decommission(self, request: HttpRequest, queryset: QuerySet[Box]) -> None:
        from provisioning.services import box_decommission

        _each(
            self,
            request,
            queryset,
            "decommission",
            lambda box: box_decommission(actor=_actor(request), box=box),
        )

    def get_urls(self) -> list[Any]:
        view = self.admin_site.admin_view(self.import_view)
        return [path("import/", view, name="fleet_box_import"), *super().get_urls()]

    def import_view(self, request: HttpRequest) -> HttpResponse:
        if not self.has_view_permission(request) or not request.user.is_staff:
            from django.core.exceptions import PermissionDenied

            raise PermissionDenied
        report = None
        form = BoxImportForm(request.POST or None, request.FILES or None)
        if request.method == "POST" and form.is_valid():
            upload = form.cleaned_data["file"]
            if upload.size > IMPORT_MAX_BYTES:
                form.add_error("file", f"the file is larger than {IMPORT_MAX_BYTES // (1024 * 1024)} MB")
            else:
                try:
                    text = upload.read().decode("utf-8-sig")
                    reader = csv.DictReader(io.StringIO(text, newline=""))
                    if reader.fieldnames is not None:
                        reader.fieldnames = [name.strip() for name in reader.fieldnames]
                    report = boxes_import(actor=_actor(request), rows=reader)
                except (UnicodeDecodeError, csv.Error) as exc:
                    form.add_error("file", f"not a readable UTF-8 CSV file: {exc}")
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "title": "Import boxes (CSV)",
            "form": form,
            "report": report,
        }
        return TemplateResponse(request, "admin/fleet/box/import.html", context)


# -- audit -----------------------------------------------------------------------------------------


@admin.register(AuditLog)
class AuditLogAdmin(admin.ModelAdmin):
    list_display = ["created_at", "actor_label", "action", "organization", "box", "target_type", "request_id"]
    list_filter = ["action", ("organization", admin.RelatedOnlyFieldListFilter)]
    search_fields = ["action", "actor_label", "request_id", "box__serial"]
    list_select_related = ["organization", "box"]
    date_hierarchy = "created_at"

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        return [field.name for field in self.model._meta.fields]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
