"""Django admin for provisioning: regions, aggregation servers, address pools (with utilisation),
assignments and tunnel credentials (read-only; secrets never shown).

Creating and changing objects goes through the provisioning services, with the staff user as the
audited actor. The form first runs the service in a rolled-back savepoint so a DomainError shows as a
form error on its field; ``save_model`` then runs it for real.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db import transaction
from django.db.models import QuerySet
from django.http import HttpRequest

from fleet.core.audit import Actor
from fleet.core.errors import DomainError
from provisioning import services
from provisioning.addressing import pool_size
from provisioning.choices import ServerStatus
from provisioning.models import AddressAssignment, AddressPool, AggregationServer, Region, TunnelCredential
from provisioning.selectors import pools_with_utilisation, servers_with_spare


def _actor(request: HttpRequest) -> Actor:
    return Actor.for_user(request.user, request.META.get("REMOTE_ADDR"))


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
            return services.region_create(actor=_actor(request), code=data["code"], name=data["name"])
        return services.region_update(actor=_actor(request), region=obj, name=data["name"])


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
            server, token = services.server_create(actor=_actor(request), **values)
            server.issued_token = token  # type: ignore[attr-defined]
            return server
        fields = {name: values[name] for name in changed if name in values}
        return services.server_update(actor=_actor(request), server=obj, **fields) if fields else obj

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
                services.server_set_status(actor=_actor(request), server=server, status=status)
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
            token = services.server_rotate_token(actor=_actor(request), server=server)
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
            actor=_actor(request),
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

    @admin.display(description="size")
    def size(self, pool: AddressPool) -> int:
        return pool_size(pool.cidr, pool.prefix_length)

    @admin.display(description="active", ordering="active_count")
    def active(self, pool: AddressPool) -> int:
        return pool.active_count  # type: ignore[attr-defined]

    @admin.display(description="quarantined", ordering="quarantined_count")
    def quarantined(self, pool: AddressPool) -> int:
        return pool.quarantined_count  # type: ignore[attr-defined]

    @admin.display(description="free")
    def free(self, pool: AddressPool) -> int:
        return self.size(pool) - pool.active_count - pool.quarantined_count  # type: ignore[attr-defined]


class ReadOnlyAdmin(admin.ModelAdmin):
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


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
