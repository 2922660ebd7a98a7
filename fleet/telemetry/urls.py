"""Telemetry endpoints under /api/v1/."""

from django.urls import path

from fleet.telemetry import apis

urlpatterns = [
    path("boxes/<uuid:box_id>/telemetry", apis.BoxTelemetryApi.as_view(), name="box-telemetry"),
    path("boxes/<uuid:box_id>/status", apis.BoxStatusApi.as_view(), name="box-status"),
]
