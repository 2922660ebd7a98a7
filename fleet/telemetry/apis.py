"""Telemetry endpoints for people: a box's live status and its time series (viewer role or more)."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

from django.utils import timezone
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response

from fleet.core.access import box_for
from fleet.core.apis.base import ApiView
from fleet.core.choices import Role
from fleet.core.permissions import IsPerson
from fleet.core.serializers import FiniteFloatField
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
    (serializers.Serializer,),
    {
        "from": serializers.DateTimeField(required=False),
        "to": serializers.DateTimeField(required=False),
        "resolution": serializers.ChoiceField(choices=["auto", "raw", "5m", "1h"], default="auto"),
        "max_points": serializers.IntegerField(
            min_value=1, max_value=MAX_MAX_POINTS, default=DEFAULT_MAX_POINTS
        ),
    },
)


class BoxTelemetryApi(ApiView):
    """GET /api/v1/boxes/{id}/telemetry?from=&to=&resolution=raw|5m|1h|auto&max_points="""

    permission_classes = [IsPerson]

    @extend_schema(
        parameters=[
            OpenApiParameter("from", str, description="ISO 8601; default: 6 hours before `to`"),
            OpenApiParameter("to", str, description="ISO 8601; default: now"),
            OpenApiParameter("resolution", str, enum=["auto", "raw", "5m", "1h"]),
            OpenApiParameter(
                "max_points", int, description=f"1..{MAX_MAX_POINTS}, default {DEFAULT_MAX_POINTS}"
            ),
        ],
        responses={200: dict},
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
        load1 = FiniteFloatField(allow_null=True)
        rx_bps = serializers.IntegerField(allow_null=True)
        tx_bps = serializers.IntegerField(allow_null=True)
        wans_up = serializers.IntegerField()
        wans_total = serializers.IntegerField()
        dropped_samples = serializers.IntegerField()

    @extend_schema(responses={200: dict})
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
