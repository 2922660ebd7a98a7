"""Admin for commands: list, filter, search; the add form and the cancel action call the services."""

from __future__ import annotations

import json
from typing import Any, cast

from django import forms
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from fleet.commands.choices import REMOTE_ACCESS_KINDS, CommandKind
from fleet.commands.models import Backup, BackupFile, Command, RemoteAccess
from fleet.commands.services import DEFAULT_TTL_S, command_cancel, command_create, command_validate
from fleet.core.audit import Actor
from fleet.core.errors import DomainError
from fleet.core.models import Box


class CommandCreateForm(forms.ModelForm):
    """Staff create commands here through ``command_create`` (validated by ``command_validate``)."""

    kind = forms.ChoiceField(
        choices=[
            (value, label)
            for value, label in CommandKind.choices
            if value != CommandKind.FIRMWARE_UPGRADE and value not in REMOTE_ACCESS_KINDS
        ]
    )
    params = forms.JSONField(
        required=False, initial=dict, help_text='e.g. {"bytes": 10000000} for speed_test'
    )
    ttl_s = forms.IntegerField(required=False, initial=DEFAULT_TTL_S, help_text="seconds, up to 86400")

    class Meta:
        model = Command
        fields = ["box", "kind", "params"]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        box_field = cast(forms.ModelChoiceField, self.fields["box"])
        box_field.queryset = Box.objects.filter(organization__isnull=False)

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        box = data.get("box")
        if box is None or not data.get("kind"):
            return data
        try:
            data["params"], data["ttl_s"] = command_validate(
                box=box, kind=data["kind"], params=data.get("params") or {}, ttl_s=data.get("ttl_s")
            )
        except DomainError as exc:
            field = (exc.field or "").split(".")[0]
            self.add_error(field if field in self.fields else None, exc.message)
        return data


@admin.register(Command)
class CommandAdmin(admin.ModelAdmin):
    list_display = ["id", "box", "organization", "kind", "state", "progress", "created_at", "finished_at"]
    list_filter = ["state", "kind", "created_at"]
    search_fields = ["id", "box__serial", "box__name", "organization__name"]
    list_select_related = ["box", "organization"]
    raw_id_fields = ["box"]
    date_hierarchy = "created_at"
    actions = ["cancel_commands"]
    readonly_fields = [
        "id",
        "box",
        "organization",
        "kind",
        "params_pretty",
        "state",
        "progress",
        "progress_message",
        "result_pretty",
        "error",
        "created_by",
        "created_at",
        "sent_at",
        "started_at",
        "finished_at",
        "expires_at",
        "delivery_count",
    ]

    def get_form(self, request: HttpRequest, obj: Any = None, change: bool = False, **kwargs: Any) -> Any:
        if obj is None:
            kwargs["form"] = CommandCreateForm
        return super().get_form(request, obj, change=change, **kwargs)

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        return self.readonly_fields if obj is not None else []

    def get_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        if obj is None:
            return ["box", "kind", "params", "ttl_s"]
        return self.readonly_fields

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # a command changes only through its lifecycle (agent reports, cancel action)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def save_model(self, request: HttpRequest, obj: Command, form: Any, change: bool) -> None:
        data = form.cleaned_data
        command = command_create(
            actor=Actor.for_user(request.user, request.META.get("REMOTE_ADDR")),
            box=data["box"],
            kind=data["kind"],
            params=data["params"],
            ttl_s=data["ttl_s"],
        )
        obj.pk, obj.state, obj.expires_at = command.pk, command.state, command.expires_at

    def save_related(self, request: HttpRequest, form: Any, formsets: Any, change: bool) -> None:
        return None

    @admin.display(description="params")
    def params_pretty(self, obj: Command) -> str:
        return json.dumps(obj.params, indent=2, sort_keys=True)

    @admin.display(description="result")
    def result_pretty(self, obj: Command) -> str:
        return json.dumps(obj.result, indent=2, sort_keys=True) if obj.result is not None else "-"

    @admin.action(description="Cancel selected commands (pending or sent)")
    def cancel_commands(self, request: HttpRequest, queryset: QuerySet[Command]) -> None:
        actor = Actor.for_user(request.user, request.META.get("REMOTE_ADDR"))
        cancelled, refused = 0, 0
        for command in queryset.order_by("pk"):
            try:
                command_cancel(actor=actor, command=command)
                cancelled += 1
            except DomainError:
                refused += 1
        if cancelled:
            self.message_user(request, f"Cancelled {cancelled} command(s).", messages.SUCCESS)
        if refused:
            self.message_user(
                request, f"{refused} command(s) were already running or finished.", messages.WARNING
            )


class BackupFileInline(admin.TabularInline):
    model = BackupFile
    fields = ("filename", "mode", "uid", "gid", "is_symlink", "symlink", "size_bytes", "sha256")
    readonly_fields = fields
    extra = 0
    can_delete = False
    show_change_link = False

    def get_queryset(self, request: HttpRequest) -> QuerySet[BackupFile]:
        return super().get_queryset(request).defer("content_ciphertext")  # the list shows no content


@admin.register(Backup)
class BackupAdmin(admin.ModelAdmin):
    """Read-only: backups are made by the ``backup`` command and restored by the ``restore`` command
    (the box page and the API); deleting one here is allowed, like in the API."""

    list_display = ["id", "box", "source", "created_at", "file_count", "size_bytes"]
    list_filter = ["source"]
    search_fields = ["box__serial", "id"]
    list_select_related = ["box"]
    readonly_fields = ["id", "box", "command", "source", "created_at", "file_count", "size_bytes"]
    inlines = [BackupFileInline]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(RemoteAccess)
class RemoteAccessAdmin(admin.ModelAdmin):
    """Read-only: remote accesses are asked for, approved and closed through the API (owner consent)."""

    list_display = ["id", "box", "state", "exposed_port", "requested_at", "approved_at", "expires_at"]
    list_filter = ["state"]
    search_fields = ["box__serial", "id"]
    list_select_related = ["box"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
