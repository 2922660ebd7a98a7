"""Telemetry endpoints for people: a box's live status and its time series (viewer role or more)."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

from django.utils import timezone
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response

from fleet.core.access import box_for
from fleet.core.apis.base import ApiView
from fleet.core.choices import Role
from fleet.core.permissions import IsPerson
from fleet.core.serializers import FiniteFloatField, QuerySerializer
from fleet.telemetry.selectors import (
    DEFAULT_MAX_POINTS,
    MAX_MAX_POINTS,
    box_live_status,
    telemetry_plan,
    telemetry_series,
)

# "from" is a Python keyword, so the query serializer is declared with a namespace dict.
TelemetryQuerySerializer = type(
    "TelemetryQuerySerializer",
    (QuerySerializer,),
    {
        "from": serializers.DateTimeField(required=False),
        "to": serializers.DateTimeField(required=False),
        "resolution": serializers.ChoiceField(choices=["auto", "raw", "5m", "1h"], default="auto"),
        "max_points": serializers.IntegerField(
            min_value=1,
            max_value=MAX_MAX_POINTS,
            default=DEFAULT_MAX_POINTS,
            help_text="at most this many points per series",
        ),
    },
)


class BoxPointSerializer(serializers.Serializer):
    ts = serializers.DateTimeField()
    samples = serializers.IntegerField()
    cpu_pct = serializers.FloatField(allow_null=True)
    cpu_max_pct = serializers.FloatField(allow_null=True)
    mem_pct = serializers.FloatField(allow_null=True)
    load1 = serializers.FloatField(allow_null=True)
    rx_bps = serializers.FloatField(allow_null=True)
    rx_max_bps = serializers.FloatField(allow_null=True)
    tx_bps = serializers.FloatField(allow_null=True)
    tx_max_bps = serializers.FloatField(allow_null=True)
    tunnel_up_ratio = serializers.FloatField(allow_null=True)
    mem_free_kb = serializers.FloatField(allow_null=True, help_text="average free memory (kB)")
    mem_free_min_kb = serializers.FloatField(allow_null=True, help_text="lowest free memory (kB)")


class WanPointSerializer(serializers.Serializer):
    ts = serializers.DateTimeField()
    samples = serializers.IntegerField()
    up_ratio = serializers.FloatField(allow_null=True)
    rtt_ms = serializers.FloatField(allow_null=True)
    rtt_max_ms = serializers.FloatField(allow_null=True)
    jitter_ms = serializers.FloatField(allow_null=True)
    loss_pct = serializers.FloatField(allow_null=True)
    rx_bps = serializers.FloatField(allow_null=True)
    rx_max_bps = serializers.FloatField(allow_null=True)
    tx_bps = serializers.FloatField(allow_null=True)
    tx_max_bps = serializers.FloatField(allow_null=True)


class WanSeriesSerializer(serializers.Serializer):
    iface = serializers.CharField()
    points = WanPointSerializer(many=True)


# The answer of BoxTelemetryApi ("from" is a keyword: declared with a namespace dict).
TelemetrySeriesSerializer = type(
    "TelemetrySeriesSerializer",
    (serializers.Serializer,),
    {
        "box_id": serializers.UUIDField(),
        "from": serializers.DateTimeField(),
        "to": serializers.DateTimeField(),
        "resolution": serializers.ChoiceField(choices=["raw", "5m", "1h"]),
        "bucket_s": serializers.IntegerField(help_text="seconds each point covers"),
        "box": BoxPointSerializer(many=True),
        "wans": WanSeriesSerializer(many=True),
    },
)


class BoxTelemetryApi(ApiView):
    """GET /api/v1/boxes/{id}/telemetry?from=&to=&resolution=raw|5m|1h|auto&max_points="""

    permission_classes = [IsPerson]

    @extend_schema(
        summary="A box's time series (CPU, memory, load, traffic, tunnel; per WAN: RTT, jitter, loss)",
        parameters=[
            TelemetryQuerySerializer,
            OpenApiParameter(
                "from", OpenApiTypes.DATETIME, description="ISO 8601; default: 6 hours before `to`"
            ),
            OpenApiParameter("to", OpenApiTypes.DATETIME, description="ISO 8601; default: now"),
        ],
        responses={200: TelemetrySeriesSerializer},
        tags=["telemetry"],
    )
    def get(self, request: Request, box_id: uuid.UUID) -> Response:
        box = box_for(request.user, box_id, Role.VIEWER, request.auth)
        query = TelemetryQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        data: dict[str, Any] = query.validated_data
        end = data.get("to") or timezone.now()
        start = data.get("from") or end - timedelta(hours=6)
        plan = telemetry_plan(
            start=start, end=end, resolution=data["resolution"], max_points=data["max_points"]
        )
        return Response(telemetry_series(box_id=box.pk, plan=plan))


class BoxStatusAnswerSerializer(serializers.Serializer):
    """What BoxStatusApi answers: the box, its live status (for a box that never connected only
    ``online`` false and ``last_seen_at`` null) and its WAN links. Documentation only: the view
    serialises with its nested serializers."""

    box_id = serializers.UUIDField()
    serial = serializers.CharField()
    never_connected = serializers.BooleanField()
    wans = serializers.ListField(child=serializers.DictField())

    def get_fields(self) -> dict[str, Any]:
        fields = super().get_fields()
        for name, field in BoxStatusApi.OutputSerializer().get_fields().items():
            field.required = name in {"online", "last_seen_at"}
            fields[name] = field
        fields["wans"] = BoxStatusApi.WanOutputSerializer(many=True)
        return fields


class BoxStatusApi(ApiView):
    """GET /api/v1/boxes/{id}/status: online, last seen, live metrics and per-WAN state."""

    permission_classes = [IsPerson]

    class WanOutputSerializer(serializers.Serializer):
        iface = serializers.CharField()
        label = serializers.CharField()  # type: ignore[assignment]
        kind = serializers.CharField()
        up = serializers.BooleanField()
        up_changed_at = serializers.DateTimeField()
        degraded_since = serializers.DateTimeField(allow_null=True)
        rtt_ms = FiniteFloatField(allow_null=True)
        jitter_ms = FiniteFloatField(allow_null=True)
        loss_pct = FiniteFloatField(allow_null=True)
        rx_bps = serializers.IntegerField()
        tx_bps = serializers.IntegerField()
        public_ip = serializers.CharField(allow_null=True)
        subflows = serializers.IntegerField()
        updated_at = serializers.DateTimeField()

    class OutputSerializer(serializers.Serializer):
        online = serializers.BooleanField()
        connected_at = serializers.DateTimeField(allow_null=True)
        disconnected_at = serializers.DateTimeField(allow_null=True)
        last_seen_at = serializers.DateTimeField(allow_null=True)
        offline_since = serializers.DateTimeField(allow_null=True)
        last_seq = serializers.IntegerField()
        boot_id = serializers.CharField()
        uptime_s = serializers.IntegerField(allow_null=True)
        agent_version = serializers.CharField()
        firmware_version = serializers.CharField()
        tunnel_up = serializers.BooleanField(allow_null=True)
        cpu_pct = FiniteFloatField(allow_null=True)
        mem_pct = FiniteFloatField(allow_null=True)
        mem_free_kb = serializers.IntegerField(allow_null=True)
        load1 = FiniteFloatField(allow_null=True)
        rx_bps = serializers.IntegerField(allow_null=True)
        tx_bps = serializers.IntegerField(allow_null=True)
        wans_up = serializers.IntegerField()
        wans_total = serializers.IntegerField()
        dropped_samples = serializers.IntegerField()

    @extend_schema(
        summary="A box's live status and WAN links",
        responses={200: BoxStatusAnswerSerializer},
        tags=["telemetry"],
    )
    def get(self, request: Request, box_id: uuid.UUID) -> Response:
        box = box_for(request.user, box_id, Role.VIEWER, request.auth)
        status, wans = box_live_status(box_id=box.pk)
        body: dict[str, Any] = {"box_id": str(box.pk), "serial": box.serial}
        if status is None:
            body.update({"online": False, "last_seen_at": None, "never_connected": True})
        else:
            body.update(self.OutputSerializer(status).data)
            body["never_connected"] = False
        body["wans"] = self.WanOutputSerializer(wans, many=True).data
        return Response(body)
