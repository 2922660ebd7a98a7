"""Admin for events, alert rules, targets, alerts and deliveries. Writes go through the services."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from fleet.core.audit import Actor
from fleet.core.errors import DomainError
from fleet.core.models import Event
from fleet.monitoring.models import Alert, AlertRule, NotificationDelivery, NotificationTarget
from fleet.monitoring.services import (
    alert_rule_create,
    alert_rule_update,
    notification_target_create,
    notification_target_update,
)
from fleet.monitoring.services.alerts import notifications_queue
from fleet.monitoring.services.rules import alert_rule_validate, notification_target_validate


def _actor(request: HttpRequest) -> Actor:
    return Actor.for_user(request.user, request.META.get("REMOTE_ADDR"))


class ReadOnlyAdmin(admin.ModelAdmin):
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Event)
class EventAdmin(ReadOnlyAdmin):
    list_display = ["ts", "kind", "box", "organization"]
    list_filter = ["kind", "ts"]
    search_fields = ["box__serial", "box__name", "organization__name"]
    list_select_related = ["box", "organization"]
    date_hierarchy = "ts"
    show_full_result_count = False


class ServiceSavedAdmin(admin.ModelAdmin):
    """Add and change forms validated by the model, saved by a service (which also audits)."""

    def _service_save(self, request: HttpRequest, obj: Any, form: Any, change: bool) -> Any:
        raise NotImplementedError

    def save_model(self, request: HttpRequest, obj: Any, form: Any, change: bool) -> None:
        obj.pk = self._service_save(request, obj, form, change).pk

    def save_related(self, request: HttpRequest, form: Any, formsets: Any, change: bool) -> None:
        return None  # the service saved the many-to-many fields


def _form_error(form: forms.ModelForm, exc: DomainError) -> None:
    field = (exc.field or "").split(".")[0]
    form.add_error(field if field in form.fields else None, exc.message)


class NotificationTargetForm(forms.ModelForm):
    url = forms.URLField(required=False, max_length=500, assume_scheme="https")

    class Meta:
        model = NotificationTarget
        fields = ["organization", "name", "kind", "email", "url", "enabled"]

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        kind = data.get("kind") or self.instance.kind
        try:
            notification_target_validate(kind=kind, email=data.get("email"), url=data.get("url"))
        except DomainError as exc:
            _form_error(self, exc)
        return data


@admin.register(NotificationTarget)
class NotificationTargetAdmin(ServiceSavedAdmin):
    form = NotificationTargetForm
    list_display = ["name", "organization", "kind", "email", "url", "enabled"]
    list_filter = ["kind", "enabled"]
    search_fields = ["name", "email", "url", "organization__name"]
    list_select_related = ["organization"]

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        return ["organization", "kind"] if obj is not None else []

    def _service_save(self, request: HttpRequest, obj: Any, form: Any, change: bool) -> Any:
        data = form.cleaned_data
        if change:
            target, secret = notification_target_update(
                actor=_actor(request),
                target=obj,
                name=data["name"],
                email=data.get("email", ""),
                url=data.get("url", ""),
                enabled=data["enabled"],
            )
        else:
            target, secret = notification_target_create(
                actor=_actor(request),
                organization=data["organization"],
                name=data["name"],
                kind=data["kind"],
                email=data.get("email") or None,
                url=data.get("url") or None,
                enabled=data["enabled"],
            )
        if secret:
            self.message_user(
                request, f"Webhook signing secret (shown once, store it now): {secret}", messages.WARNING
            )
        return target


class AlertRuleForm(forms.ModelForm):
    class Meta:
        model = AlertRule
        fields = [
            "organization",
            "name",
            "kind",
            "threshold",
            "duration_minutes",
            "box",
            "enabled",
            "targets",
        ]

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        organization = data.get("organization") or getattr(self.instance, "organization", None)
        kind = data.get("kind") or self.instance.kind
        if organization is None or not kind:
            return data
        try:
            alert_rule_validate(
                organization=organization,
                kind=kind,
                threshold=data.get("threshold"),
                duration_minutes=data.get("duration_minutes"),
                box=data.get("box"),
            )
        except DomainError as exc:
            _form_error(self, exc)
        targets = data.get("targets") or []
        if any(target.organization_id != organization.pk for target in targets):
            self.add_error("targets", "every target must belong to the rule's organization")
        return data


@admin.register(AlertRule)
class AlertRuleAdmin(ServiceSavedAdmin):
    form = AlertRuleForm
    list_display = ["name", "organization", "kind", "threshold", "duration_minutes", "box", "enabled"]
    list_filter = ["kind", "enabled"]
    search_fields = ["name", "organization__name", "box__serial"]
    list_select_related = ["organization", "box"]
    raw_id_fields = ["box"]
    filter_horizontal = ["targets"]

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        return ["organization", "kind"] if obj is not None else []

    def _service_save(self, request: HttpRequest, obj: Any, form: Any, change: bool) -> Any:
        data = form.cleaned_data
        target_ids = [target.pk for target in data.get("targets", [])]
        if change:
            return alert_rule_update(
                actor=_actor(request),
                rule=obj,
                name=data["name"],
                threshold=data.get("threshold"),
                duration_minutes=data["duration_minutes"],
                box=data.get("box"),
                enabled=data["enabled"],
                target_ids=target_ids,
            )
        return alert_rule_create(
            actor=_actor(request),
            organization=data["organization"],
            name=data["name"],
            kind=data["kind"],
            threshold=data.get("threshold"),
            duration_minutes=data["duration_minutes"],
            box=data.get("box"),
            enabled=data["enabled"],
            target_ids=target_ids,
        )


@admin.register(Alert)
class AlertAdmin(ReadOnlyAdmin):
    list_display = ["rule", "box", "iface", "state", "value", "started_at", "fired_at", "resolved_at"]
    list_filter = ["state", "rule__kind"]
    search_fields = ["box__serial", "rule__name", "organization__name"]
    list_select_related = ["rule", "box"]


@admin.register(NotificationDelivery)
class NotificationDeliveryAdmin(ReadOnlyAdmin):
    list_display = [
        "created_at",
        "alert",
        "box_event",
        "target",
        "email",
        "event",
        "state",
        "attempts",
        "response_status",
        "sent_at",
    ]
    list_filter = ["state", "event", "target__kind"]
    search_fields = ["target__name", "email", "alert__box__serial", "box_event__box__serial"]
    list_select_related = ["alert", "alert__rule", "alert__box", "box_event", "target"]
    actions = ["requeue"]

    @admin.action(description="Queue another attempt for the selected pending deliveries")
    def requeue(self, request: HttpRequest, queryset: QuerySet[NotificationDelivery]) -> None:
        ids = list(queryset.filter(state="pending").values_list("pk", flat=True))
        notifications_queue(delivery_ids=ids)
        self.message_user(request, f"Queued {len(ids)} deliveries.", messages.SUCCESS)
