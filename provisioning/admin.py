"""Django admin for provisioning: boxes (with their public address, the lifecycle actions and the CSV
import), regions, aggregation servers, address pools (with utilisation), assignments and tunnel
credentials (read-only; secrets never shown).

Creating and changing objects goes through the provisioning services, with the staff user as the
audited actor. The form first runs the service in a rolled-back savepoint so a DomainError shows as a
form error on its field; ``save_model`` then runs it for real.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import path

from fleet.core.admin_support import ReadOnlyAdmin, run_for_each, staff_actor
from fleet.core.errors import DomainError
from fleet.core.models import BOX_DRIFTING, Box, Region
from provisioning.choices import ServerStatus
from provisioning.models import AddressAssignment, AddressPool, AggregationServer, TunnelCredential
from provisioning.selectors.boxes import boxes_annotated
from provisioning.selectors.infrastructure import pools_with_utilisation, servers_with_spare
from provisioning.services import infrastructure as services
from provisioning.services.configuration import box_update
from provisioning.services.inventory import boxes_import
from provisioning.services.lifecycle import (
    box_decommission,
    box_reassign_server,
    box_release_addresses,
    box_revoke_credentials,
)

IMPORT_MAX_BYTES = 20 * 1024 * 1024


class _DryRun(Exception):
    """Raised to roll back the savepoint of a validation run."""


class ServiceForm(forms.ModelForm):
    """A ModelForm whose ``clean()`` runs the admin's service call in a savepoint that is rolled
    back, turning a DomainError into a form error on its field."""

    admin_request: HttpRequest | None = None
    service_call: Callable[[HttpRequest, Any, dict[str, Any], list[str]], Any] | None = None

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        call = type(self).service_call
        if self.errors or call is None or self.admin_request is None:
            return cleaned
        original = None if self.instance._state.adding else self.instance
        try:
            with transaction.atomic():
                call(self.admin_request, original, cleaned, list(self.changed_data))
                raise _DryRun
        except _DryRun:
            pass
        except DomainError as exc:
            if exc.field and exc.field in self.fields:
                self.add_error(exc.field, exc.message)
            else:
                raise forms.ValidationError(exc.message) from exc
        return cleaned


class ServiceAdmin(admin.ModelAdmin):
    """Binds the request to the form and routes saves through ``service_call``."""

    form = ServiceForm

    def service_call(self, request: HttpRequest, obj: Any, data: dict[str, Any], changed: list[str]) -> Any:
        raise NotImplementedError

    def get_form(self, request: HttpRequest, obj: Any = None, change: bool = False, **kwargs: Any) -> Any:
        form: Any = super().get_form(request, obj, change=change, **kwargs)
        form.admin_request = request
        form.service_call = staticmethod(self.service_call)
        return form

    def save_model(self, request: HttpRequest, obj: Any, form: Any, change: bool) -> None:
        original = type(obj).objects.get(pk=obj.pk) if change else None
        saved = self.service_call(request, original, form.cleaned_data, list(form.changed_data))
        if saved is not None:
            obj.pk = saved.pk
            obj.__dict__.update({k: v for k, v in saved.__dict__.items() if not k.startswith("_")})


@admin.register(Region)
class RegionAdmin(ServiceAdmin):
    list_display = ["code", "name"]
    search_fields = ["code", "name"]
    fields = ["code", "name"]

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        return ["code"] if obj is not None else []

    def service_call(self, request: HttpRequest, obj: Any, data: dict[str, Any], changed: list[str]) -> Any:
        if obj is None:
            return services.region_create(actor=staff_actor(request), code=data["code"], name=data["name"])
        return services.region_update(actor=staff_actor(request), region=obj, name=data["name"])


SERVER_FORM_FIELDS = [
    "name",
    "region",
    "hostname",
    "public_ipv4",
    "public_ipv6",
    "tunnel_port_min",
    "tunnel_port_max",
    "capacity",
    "wg_public_key",
    "status",
]


@admin.register(AggregationServer)
class AggregationServerAdmin(ServiceAdmin):
    list_display = [
        "name",
        "region",
        "status",
        "capacity",
        "assigned_boxes",
        "spare",
        "hostname",
        "public_ipv4",
    ]
    list_filter = ["status", "region"]
    search_fields = ["name", "hostname", "public_ipv4"]
    fields = [*SERVER_FORM_FIELDS, "assigned_boxes", "token_prefix", "created_at", "updated_at"]
    readonly_fields = ["assigned_boxes", "token_prefix", "created_at", "updated_at"]
    actions = ["set_active", "set_draining", "set_down", "rotate_token"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[AggregationServer]:
        return servers_with_spare()

    @admin.display(description="spare", ordering="spare")
    def spare(self, server: AggregationServer) -> int:
        return server.spare  # type: ignore[attr-defined]

    def service_call(self, request: HttpRequest, obj: Any, data: dict[str, Any], changed: list[str]) -> Any:
        values: dict[str, Any] = {name: data.get(name) for name in SERVER_FORM_FIELDS}
        if obj is None:
            server, token = services.server_create(actor=staff_actor(request), **values)
            server.issued_token = token  # type: ignore[attr-defined]
            return server
        fields = {name: values[name] for name in changed if name in values}
        return services.server_update(actor=staff_actor(request), server=obj, **fields) if fields else obj

    def save_model(self, request: HttpRequest, obj: Any, form: Any, change: bool) -> None:
        super().save_model(request, obj, form, change)
        token = getattr(obj, "issued_token", None)
        if token:
            self.message_user(
                request,
                f"Server token for {obj.name} (shown once, store it on the server now): {token}",
                messages.WARNING,
            )

    def _set_status(self, request: HttpRequest, queryset: QuerySet[AggregationServer], status: str) -> None:
        for server in queryset:
            try:
                services.server_set_status(actor=staff_actor(request), server=server, status=status)
            except DomainError as exc:
                self.message_user(request, f"{server}: {exc.message}", messages.ERROR)
        self.message_user(request, f"Status set to {status}.", messages.SUCCESS)

    @admin.action(description="Set active (takes new boxes)")
    def set_active(self, request: HttpRequest, queryset: QuerySet[AggregationServer]) -> None:
        self._set_status(request, queryset, ServerStatus.ACTIVE)

    @admin.action(description="Set draining (keeps its boxes, takes no new ones)")
    def set_draining(self, request: HttpRequest, queryset: QuerySet[AggregationServer]) -> None:
        self._set_status(request, queryset, ServerStatus.DRAINING)

    @admin.action(description="Set down")
    def set_down(self, request: HttpRequest, queryset: QuerySet[AggregationServer]) -> None:
        self._set_status(request, queryset, ServerStatus.DOWN)

    @admin.action(description="Rotate the server token (the new one is shown once)")
    def rotate_token(self, request: HttpRequest, queryset: QuerySet[AggregationServer]) -> None:
        for server in queryset:
            token = services.server_rotate_token(actor=staff_actor(request), server=server)
            self.message_user(request, f"New token for {server.name} (shown once): {token}", messages.WARNING)


class PoolForm(ServiceForm):
    class Meta:
        model = AddressPool
        fields = ["name", "cidr", "purpose", "prefix_length", "region", "server"]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if "prefix_length" in self.fields:
            self.fields["prefix_length"].required = False
            self.fields["prefix_length"].help_text = "Empty: /32 public, /31 (/127) tunnel, /56 IPv6."


@admin.register(AddressPool)
class AddressPoolAdmin(ServiceAdmin):
    """Pools are created through the service and are immutable afterwards (their assignments depend
    on the network and prefix length)."""

    form = PoolForm
    list_display = [
        "name",
        "cidr",
        "purpose",
        "prefix_length",
        "owner",
        "size",
        "active",
        "quarantined",
        "free",
    ]
    list_filter = ["purpose", "region"]
    search_fields = ["name"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[AddressPool]:
        return pools_with_utilisation()

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        return ["name", "cidr", "purpose", "prefix_length", "region", "server"] if obj is not None else []

    def service_call(self, request: HttpRequest, obj: Any, data: dict[str, Any], changed: list[str]) -> Any:
        if obj is not None:
            return obj
        return services.pool_create(
            actor=staff_actor(request),
            name=data["name"],
            cidr=data["cidr"],
            purpose=data["purpose"],
            prefix_length=data.get("prefix_length"),
            region=data.get("region"),
            server=data.get("server"),
        )

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.display(description="owner")
    def owner(self, pool: AddressPool) -> str:
        return f"server {pool.server}" if pool.server_id else f"region {pool.region}"

    @admin.display(description="usable")
    def size(self, pool: AddressPool) -> int:
        return int(pool.usable_count)  # type: ignore[attr-defined]

    @admin.display(description="active", ordering="active_count")
    def active(self, pool: AddressPool) -> int:
        return pool.active_count  # type: ignore[attr-defined]

    @admin.display(description="quarantined", ordering="quarantined_count")
    def quarantined(self, pool: AddressPool) -> int:
        return pool.quarantined_count  # type: ignore[attr-defined]

    @admin.display(description="free")
    def free(self, pool: AddressPool) -> int:
        return self.size(pool) - pool.active_count - pool.quarantined_count  # type: ignore[attr-defined]


@admin.register(AddressAssignment)
class AddressAssignmentAdmin(ReadOnlyAdmin):
    list_display = ["prefix", "purpose", "state", "box", "pool", "assigned_at", "quarantine_until"]
    list_filter = ["purpose", "state", "pool"]
    search_fields = ["prefix", "box__serial"]
    list_select_related = ["box", "pool"]
    raw_id_fields = ["box"]


@admin.register(TunnelCredential)
class TunnelCredentialAdmin(ReadOnlyAdmin):
    list_display = ["box", "kind", "public_key", "created_at", "revoked_at"]
    list_filter = ["kind"]
    search_fields = ["box__serial"]
    list_select_related = ["box"]
    exclude = ["secret_ciphertext"]


# -- boxes -----------------------------------------------------------------------------------------


class DriftFilter(admin.SimpleListFilter):
    title = "config drift"
    parameter_name = "drift"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("yes", "Drifting"), ("no", "In sync")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Box]) -> QuerySet[Box]:
        if self.value() == "yes":
            return queryset.filter(BOX_DRIFTING)
        if self.value() == "no":
            return queryset.exclude(BOX_DRIFTING)
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
            box_update(actor=staff_actor(request), box=obj, name=obj.name, tags=list(obj.tags))
        except DomainError as exc:
            self.message_user(request, exc.message, messages.ERROR)

    @admin.action(description="Reassign to the best server (changes the public IP)")
    def reassign_server(self, request: HttpRequest, queryset: QuerySet[Box]) -> TemplateResponse | None:
        """First a confirmation page saying that each box's public IP changes (the customer is
        notified); once confirmed, the reassignment of each box, reporting its old and new address."""
        boxes = list(queryset.order_by("serial"))
        if request.POST.get("confirmed") != "yes":
            return TemplateResponse(
                request,
                "admin/fleet/box/reassign_confirm.html",
                {
                    **self.admin_site.each_context(request),
                    "opts": self.model._meta,
                    "title": "Reassign to the best server: the public IP changes",
                    "boxes": boxes,
                    "action_checkbox_name": ACTION_CHECKBOX_NAME,
                },
            )
        old_ips = {box.pk: getattr(box, "public_ipv4", None) for box in boxes}
        run_for_each(
            self,
            request,
            boxes,
            "reassign",
            lambda box: box_reassign_server(actor=staff_actor(request), box=box),
        )
        moved = boxes_annotated(Box.objects.filter(pk__in=list(old_ips)))
        new_ips = dict(moved.values_list("pk", "public_ipv4"))
        for box in boxes:
            if new_ips.get(box.pk) != old_ips[box.pk]:
                self.message_user(
                    request,
                    f"{box.serial}: public IP {old_ips[box.pk] or 'none'} → {new_ips.get(box.pk) or 'none'} "
                    "(the customer is notified).",
                    messages.WARNING,
                )
        return None

    @admin.action(description="Release addresses")
    def release_addresses(self, request: HttpRequest, queryset: QuerySet[Box]) -> None:
        run_for_each(
            self,
            request,
            queryset,
            "release",
            lambda box: box_release_addresses(actor=staff_actor(request), box=box),
        )

    @admin.action(description="Revoke credentials (agent, OTB device, tunnels: new tunnel keys issued)")
    def revoke_credentials(self, request: HttpRequest, queryset: QuerySet[Box]) -> None:
        run_for_each(
            self,
            request,
            queryset,
            "revoke",
            lambda box: box_revoke_credentials(
                actor=staff_actor(request), box=box, include_agent=True, reissue=True
            ),
        )

    @admin.action(description="Decommission (irreversible)")
    def decommission(self, request: HttpRequest, queryset: QuerySet[Box]) -> None:
        run_for_each(
            self,
            request,
            queryset,
            "decommission",
            lambda box: box_decommission(actor=staff_actor(request), box=box),
        )

    def get_urls(self) -> list[Any]:
        view = self.admin_site.admin_view(self.import_view)
        return [path("import/", view, name="fleet_box_import"), *super().get_urls()]

    def import_view(self, request: HttpRequest) -> HttpResponse:
        if not self.has_view_permission(request) or not request.user.is_staff:
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
                    report = boxes_import(actor=staff_actor(request), rows=reader)
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
