"""REST edge for events, alert rules, notification targets, alerts and deliveries."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema, extend_schema_field
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response

from fleet.core.access import box_for, organization_for, organization_visible, visible_organization_ids
from fleet.core.apis.base import ApiView
from fleet.core.choices import EventKind, Role
from fleet.core.models import Event
from fleet.core.pagination import EventPagination
from fleet.core.permissions import IsPerson
from fleet.core.serializers import QuerySerializer, StrictSerializer
from fleet.monitoring import selectors
from fleet.monitoring.choices import AlertRuleKind, AlertState, TargetKind
from fleet.monitoring.models import Alert, AlertRule, NotificationDelivery, NotificationTarget
from fleet.monitoring.services import (
    alert_rule_create,
    alert_rule_delete,
    alert_rule_update,
    notification_target_create,
    notification_target_delete,
    notification_target_update,
)


class EventFilterSerializer(QuerySerializer):
    kind = serializers.ChoiceField(choices=EventKind.choices, required=False)
    to = serializers.DateTimeField(required=False)

    def get_fields(self) -> dict[str, Any]:
        fields = super().get_fields()
        fields["from"] = serializers.DateTimeField(required=False)
        return fields

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if attrs.get("from") and attrs.get("to") and attrs["from"] >= attrs["to"]:
            raise serializers.ValidationError({"to": ["must be after from"]})
        return attrs


class EventOutputSerializer(serializers.ModelSerializer):
    box = serializers.UUIDField(source="box_id")
    organization = serializers.UUIDField(source="organization_id", allow_null=True)

    class Meta:
        model = Event
        fields = ["id", "box", "organization", "kind", "ts", "data"]


class BoxEventListApi(ApiView):
    permission_classes = [IsPerson]
    pagination_class = EventPagination

    @extend_schema(
        summary="A box's timeline (cursor pagination, newest first)",
        parameters=[EventFilterSerializer],
        responses={200: EventOutputSerializer(many=True)},
        tags=["events"],
    )
    def get(self, request: Request, box_id: Any) -> Response:
        box = box_for(request.user, box_id, Role.VIEWER, request.auth)
        filters = EventFilterSerializer(data=request.query_params)
        filters.is_valid(raise_exception=True)
        events = selectors.event_list(box_id=box.pk, filters=filters.validated_data)
        return self.paginated(request, events, EventOutputSerializer)


class OrganizationEventListApi(ApiView):
    permission_classes = [IsPerson]
    pagination_class = EventPagination

    class FilterSerializer(EventFilterSerializer):
        box = serializers.UUIDField(required=False)

    @extend_schema(
        summary="An organisation's timeline (cursor pagination, newest first)",
        parameters=[FilterSerializer],
        responses={200: EventOutputSerializer(many=True)},
        tags=["events"],
    )
    def get(self, request: Request, org_id: Any) -> Response:
        organization = organization_for(request.user, org_id, Role.VIEWER, request.auth)
        filters = self.FilterSerializer(data=request.query_params)
        filters.is_valid(raise_exception=True)
        return self.paginated(
            request,
            selectors.event_list(organization_id=organization.pk, filters=filters.validated_data),
            EventOutputSerializer,
        )


# -- alert rules -----------------------------------------------------------------------------


class AlertRuleOutputSerializer(serializers.ModelSerializer):
    organization = serializers.UUIDField(source="organization_id")
    box = serializers.UUIDField(source="box_id", allow_null=True)
    targets = serializers.SerializerMethodField()

    class Meta:
        model = AlertRule
        fields = [
            "id",
            "organization",
            "name",
            "kind",
            "threshold",
            "duration_minutes",
            "box",
            "enabled",
            "targets",
            "created_at",
            "updated_at",
        ]

    @extend_schema_field(serializers.ListField(child=serializers.UUIDField()))
    def get_targets(self, rule: AlertRule) -> list[str]:
        return sorted(str(target.pk) for target in rule.targets.all())


class AlertRuleInputSerializer(StrictSerializer):
    name = serializers.CharField(max_length=100)
    kind = serializers.ChoiceField(choices=AlertRuleKind.choices)
    threshold = serializers.FloatField(required=False, allow_null=True)
    duration_minutes = serializers.IntegerField(required=False, min_value=1, max_value=1440)
    box = serializers.UUIDField(required=False, allow_null=True)
    enabled = serializers.BooleanField(required=False)
    targets = serializers.ListField(child=serializers.UUIDField(), required=False, max_length=50)


class AlertRuleListApi(ApiView):
    permission_classes = [IsPerson]

    @extend_schema(
        summary="An organisation's alert rules",
        responses={200: AlertRuleOutputSerializer(many=True)},
        tags=["alerts"],
    )
    def get(self, request: Request, org_id: Any) -> Response:
        organization = organization_for(request.user, org_id, Role.VIEWER, request.auth)
        return self.paginated(
            request, selectors.alert_rule_list(organization_id=organization.pk), AlertRuleOutputSerializer
        )

    @extend_schema(
        summary="Create an alert rule",
        request=AlertRuleInputSerializer,
        responses={201: AlertRuleOutputSerializer},
        tags=["alerts"],
    )
    def post(self, request: Request, org_id: Any) -> Response:
        actor = self.actor(request)
        organization = organization_visible(actor, org_id)
        payload = AlertRuleInputSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        data = dict(payload.validated_data)
        if "targets" in data:
            data["target_ids"] = data.pop("targets")
        rule = alert_rule_create(actor=actor, organization=organization, **data)
        rule = selectors.alert_rule_get(organization_id=organization.pk, rule_id=rule.pk)
        return Response(AlertRuleOutputSerializer(rule).data, status=201)


class AlertRuleDetailApi(ApiView):
    permission_classes = [IsPerson]

    class UpdateSerializer(AlertRuleInputSerializer):
        name = serializers.CharField(max_length=100, required=False)
        kind = None  # type: ignore[assignment]  # fixed at creation

    @extend_schema(summary="An alert rule", responses={200: AlertRuleOutputSerializer}, tags=["alerts"])
    def get(self, request: Request, org_id: Any, rule_id: Any) -> Response:
        organization = organization_for(request.user, org_id, Role.VIEWER, request.auth)
        rule = selectors.alert_rule_get(organization_id=organization.pk, rule_id=rule_id)
        return Response(AlertRuleOutputSerializer(rule).data)

    @extend_schema(
        summary="Change an alert rule (its kind is fixed)",
        request=UpdateSerializer,
        responses={200: AlertRuleOutputSerializer},
        tags=["alerts"],
    )
    def patch(self, request: Request, org_id: Any, rule_id: Any) -> Response:
        actor = self.actor(request)
        organization = organization_visible(actor, org_id)
        rule = selectors.alert_rule_get(organization_id=organization.pk, rule_id=rule_id)
        payload = self.UpdateSerializer(data=request.data, partial=True)
        payload.is_valid(raise_exception=True)
        data = dict(payload.validated_data)
        if "targets" in data:
            data["target_ids"] = data.pop("targets")
        alert_rule_update(actor=actor, rule=rule, **data)
        rule = selectors.alert_rule_get(organization_id=organization.pk, rule_id=rule.pk)
        return Response(AlertRuleOutputSerializer(rule).data)

    @extend_schema(summary="Delete an alert rule", request=None, responses={204: None}, tags=["alerts"])
    def delete(self, request: Request, org_id: Any, rule_id: Any) -> Response:
        actor = self.actor(request)
        organization = organization_visible(actor, org_id)
        rule = selectors.alert_rule_get(organization_id=organization.pk, rule_id=rule_id)
        alert_rule_delete(actor=actor, rule=rule)
        return Response(status=204)


# -- notification targets ----------------------------------------------------------------------


class NotificationTargetOutputSerializer(serializers.ModelSerializer):
    organization = serializers.UUIDField(source="organization_id")

    class Meta:
        model = NotificationTarget
        fields = ["id", "organization", "name", "kind", "email", "url", "enabled", "created_at", "updated_at"]


class NotificationTargetCreatedSerializer(NotificationTargetOutputSerializer):
    secret = serializers.CharField(
        required=False, help_text="a webhook's signing secret: only when created or rotated, shown once"
    )

    class Meta(NotificationTargetOutputSerializer.Meta):
        fields = [*NotificationTargetOutputSerializer.Meta.fields, "secret"]


def _target_body(target: NotificationTarget, secret: str | None) -> dict[str, Any]:
    body = dict(NotificationTargetOutputSerializer(target).data)
    if secret:
        body["secret"] = secret  # shown once: only the encrypted form is stored
    return body


class NotificationTargetListApi(ApiView):
    permission_classes = [IsPerson]

    class InputSerializer(StrictSerializer):
        name = serializers.CharField(max_length=100)
        kind = serializers.ChoiceField(choices=TargetKind.choices)
        email = serializers.CharField(required=False, allow_blank=True, max_length=254)
        url = serializers.CharField(required=False, allow_blank=True, max_length=500)
        enabled = serializers.BooleanField(required=False, default=True)

    @extend_schema(
        summary="An organisation's notification targets",
        responses={200: NotificationTargetOutputSerializer(many=True)},
        tags=["alerts"],
    )
    def get(self, request: Request, org_id: Any) -> Response:
        organization = organization_for(request.user, org_id, Role.VIEWER, request.auth)
        return self.paginated(
            request,
            selectors.notification_target_list(organization_id=organization.pk),
            NotificationTargetOutputSerializer,
        )

    @extend_schema(
        summary="Create a notification target (a webhook's secret is in the answer, once)",
        request=InputSerializer,
        responses={201: NotificationTargetCreatedSerializer},
        tags=["alerts"],
    )
    def post(self, request: Request, org_id: Any) -> Response:
        actor = self.actor(request)
        organization = organization_visible(actor, org_id)
        payload = self.InputSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        target, secret = notification_target_create(
            actor=actor, organization=organization, **payload.validated_data
        )
        return Response(_target_body(target, secret), status=201)


class NotificationTargetDetailApi(ApiView):
    permission_classes = [IsPerson]

    class UpdateSerializer(StrictSerializer):
        name = serializers.CharField(max_length=100, required=False)
        email = serializers.CharField(required=False, allow_blank=True, max_length=254)
        url = serializers.CharField(required=False, allow_blank=True, max_length=500)
        enabled = serializers.BooleanField(required=False)
        rotate_secret = serializers.BooleanField(required=False, default=False)

    @extend_schema(
        summary="A notification target", responses={200: NotificationTargetOutputSerializer}, tags=["alerts"]
    )
    def get(self, request: Request, org_id: Any, target_id: Any) -> Response:
        organization = organization_for(request.user, org_id, Role.VIEWER, request.auth)
        target = selectors.notification_target_get(organization_id=organization.pk, target_id=target_id)
        return Response(NotificationTargetOutputSerializer(target).data)

    @extend_schema(
        summary="Change a notification target (`rotate_secret`: a new webhook secret, in the answer once)",
        request=UpdateSerializer,
        responses={200: NotificationTargetCreatedSerializer},
        tags=["alerts"],
    )
    def patch(self, request: Request, org_id: Any, target_id: Any) -> Response:
        actor = self.actor(request)
        organization = organization_visible(actor, org_id)
        target = selectors.notification_target_get(organization_id=organization.pk, target_id=target_id)
        payload = self.UpdateSerializer(data=request.data, partial=True)
        payload.is_valid(raise_exception=True)
        target, secret = notification_target_update(actor=actor, target=target, **payload.validated_data)
        return Response(_target_body(target, secret))

    @extend_schema(
        summary="Delete a notification target", request=None, responses={204: None}, tags=["alerts"]
    )
    def delete(self, request: Request, org_id: Any, target_id: Any) -> Response:
        actor = self.actor(request)
        organization = organization_visible(actor, org_id)
        target = selectors.notification_target_get(organization_id=organization.pk, target_id=target_id)
        notification_target_delete(actor=actor, target=target)
        return Response(status=204)


# -- alerts and deliveries -----------------------------------------------------------------------


class AlertOutputSerializer(serializers.ModelSerializer):
    rule = serializers.UUIDField(source="rule_id")
    rule_name = serializers.CharField(source="rule.name")
    rule_kind = serializers.CharField(source="rule.kind")
    box = serializers.UUIDField(source="box_id")
    box_serial = serializers.CharField(source="box.serial")

    class Meta:
        model = Alert
        fields = [
            "id",
            "rule",
            "rule_name",
            "rule_kind",
            "box",
            "box_serial",
            "iface",
            "state",
            "value",
            "started_at",
            "fired_at",
            "resolved_at",
            "last_notified_at",
        ]


class AlertListApi(ApiView):
    permission_classes = [IsPerson]

    class FilterSerializer(QuerySerializer):
        state = serializers.ChoiceField(choices=AlertState.choices, required=False)
        box = serializers.UUIDField(required=False)

    @extend_schema(
        summary="An organisation's alerts",
        parameters=[FilterSerializer],
        responses={200: AlertOutputSerializer(many=True)},
        tags=["alerts"],
    )
    def get(self, request: Request, org_id: Any) -> Response:
        organization = organization_for(request.user, org_id, Role.VIEWER, request.auth)
        filters = self.FilterSerializer(data=request.query_params)
        filters.is_valid(raise_exception=True)
        queryset = selectors.alert_list(
            organization_id=organization.pk,
            state=filters.validated_data.get("state"),
            box_id=filters.validated_data.get("box"),
        )
        return self.paginated(request, queryset, AlertOutputSerializer)


class NotificationDeliveryOutputSerializer(serializers.ModelSerializer):
    """A delivery of an alert event (``alert``) or of a notice of a box event (``box_event``), to a
    notification target or, for a notice to an organisation without targets, an owner's ``email``."""

    alert = serializers.UUIDField(source="alert_id", allow_null=True)
    box_event = serializers.UUIDField(source="box_event_id", allow_null=True)
    target = serializers.UUIDField(source="target_id", allow_null=True)
    target_name = serializers.CharField(source="target.name", allow_null=True)
    target_kind = serializers.CharField(source="target.kind", allow_null=True)

    class Meta:
        model = NotificationDelivery
        fields = [
            "id",
            "alert",
            "box_event",
            "target",
            "target_name",
            "target_kind",
            "email",
            "event",
            "state",
            "attempts",
            "last_error",
            "response_status",
            "created_at",
            "sent_at",
        ]


class NotificationDeliveryListApi(ApiView):
    permission_classes = [IsPerson]

    class FilterSerializer(QuerySerializer):
        alert = serializers.UUIDField(required=False)

    @extend_schema(
        summary="Notification deliveries of the caller's organisations",
        parameters=[FilterSerializer],
        responses={200: NotificationDeliveryOutputSerializer(many=True)},
        tags=["alerts"],
    )
    def get(self, request: Request) -> Response:
        filters = self.FilterSerializer(data=request.query_params)
        filters.is_valid(raise_exception=True)
        queryset = selectors.notification_delivery_list(
            organization_ids=visible_organization_ids(request.user, request.auth),
            alert_id=filters.validated_data.get("alert"),
        )
        return self.paginated(request, queryset, NotificationDeliveryOutputSerializer)
