"""Django admin for support staff: organisations and people, tokens (hashes never shown) and the
read-only audit log. (Boxes, with their support actions and the CSV import, are
``provisioning.admin``.)

Every change goes through the same services as the API, with the staff user as the audited actor.
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest

from fleet.core.admin_support import ReadOnlyAdmin, run_for_each, staff_actor
from fleet.core.models import ApiToken, AuditLog, EnrollmentToken, Invitation, Membership, Organization
from fleet.core.services import api_token_revoke, enrollment_token_revoke

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
        run_for_each(self, request, queryset, "revoke", lambda token: self.revoke_one(request, token))


@admin.register(ApiToken)
class ApiTokenAdmin(TokenAdminBase):
    list_display = ["name", "token_prefix", "user", "organization", "created_at", "expires_at", "revoked_at"]
    list_filter = ["organization"]
    search_fields = ["name", "token_prefix", "user__email", "organization__name"]
    list_select_related = ["user", "organization"]

    def revoke_one(self, request: HttpRequest, token: Any) -> None:
        api_token_revoke(actor=staff_actor(request), token=token)


@admin.register(EnrollmentToken)
class EnrollmentTokenAdmin(TokenAdminBase):
    list_display = ["name", "token_prefix", "organization", "single_use", "uses", "expires_at", "revoked_at"]
    list_filter = ["organization", "single_use"]
    search_fields = ["name", "token_prefix", "organization__name"]
    list_select_related = ["organization"]

    def revoke_one(self, request: HttpRequest, token: Any) -> None:
        enrollment_token_revoke(actor=staff_actor(request), token=token)


# -- audit -----------------------------------------------------------------------------------------


@admin.register(AuditLog)
class AuditLogAdmin(ReadOnlyAdmin):
    list_display = ["created_at", "actor_label", "action", "organization", "box", "target_type", "request_id"]
    list_filter = ["action", ("organization", admin.RelatedOnlyFieldListFilter)]
    search_fields = ["action", "actor_label", "request_id", "box__serial"]
    list_select_related = ["organization", "box"]
    date_hierarchy = "created_at"

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        return [field.name for field in self.model._meta.fields]
