"""The /1.0 telemetry routes (events, properties, metrics, diagnostics): authenticate, call one service
of ``otbcompat.telemetry``, answer ``{}`` (the box reads nothing back but the diagnostic id).

They accept a JWT expired less than ``OTB_COMPAT_TELEMETRY_JWT_GRACE_S`` ago (still correctly signed,
of the device's current generation, device not revoked): after an expiry the box's queued ``start``
event and properties go out before its first poll, and a 401 would drop them (it never retries one).
The firmware version the box names in ``X-Overthebox-Version`` is recorded once the report is taken.
"""

from __future__ import annotations

import logging
import time

from django.http import HttpRequest, HttpResponse, JsonResponse

from otbcompat.errors import OtbError
from otbcompat.models import OtbDevice
from otbcompat.services import device_from_path, device_service_box, setting_int
from otbcompat.telemetry.diagnostics import DIAGNOSTIC_BODY_MAX, diagnostic_item_add, diagnostic_start
from otbcompat.telemetry.events import event_report
from otbcompat.telemetry.firmware import firmware_header_report
from otbcompat.telemetry.metrics import StorageUnavailable, TelemetryRejected, metrics_report
from otbcompat.telemetry.properties import properties_report
from otbcompat.views import json_body, otb_view

logger = logging.getLogger(__name__)


class OtbUnavailable(OtbError):
    status = 503
    error_class = "Server::ServiceUnavailable"


def _device(request: HttpRequest, device_id: str) -> OtbDevice:
    return device_from_path(
        request.headers.get("Authorization"),
        device_id,
        expired_grace_s=setting_int("OTB_COMPAT_TELEMETRY_JWT_GRACE_S"),
    )


def _version_report(request: HttpRequest, device: OtbDevice) -> None:
    if device.box is not None:
        firmware_header_report(device.box, request.headers.get("X-Overthebox-Version"))


@otb_view("POST")
def events(request: HttpRequest, device_id: str) -> HttpResponse:
    device = _device(request, device_id)
    event_report(device=device, body=json_body(request), received=time.time())
    _version_report(request, device)
    return JsonResponse({})


@otb_view("POST")
def properties(request: HttpRequest, device_id: str) -> HttpResponse:
    device = _device(request, device_id)
    properties_report(device=device, body=json_body(request, strict=False))
    _version_report(request, device)
    return JsonResponse({})


@otb_view("POST")
def metrics(request: HttpRequest, device_id: str, service_id: str) -> HttpResponse:
    device = _device(request, device_id)
    box = device_service_box(device, service_id)
    try:
        metrics_report(device=device, box=box, body=json_body(request, strict=False), received=time.time())
    except StorageUnavailable as exc:
        logger.warning("metrics of OTB box %s not stored: %s", box.pk, exc)
        raise OtbUnavailable("the metrics could not be stored now") from exc
    except TelemetryRejected as exc:
        logger.warning("metrics of OTB box %s refused: %s", box.pk, exc)
        raise OtbUnavailable("the metrics could not be stored") from exc
    _version_report(request, device)
    return JsonResponse({})


@otb_view("POST")
def diagnostics(request: HttpRequest, device_id: str) -> HttpResponse:
    device = _device(request, device_id)
    diagnostic = diagnostic_start(device=device, body=json_body(request))
    _version_report(request, device)
    return JsonResponse({"diagnostic_id": str(diagnostic.pk)})


@otb_view("PUT")
def diagnostic_item(request: HttpRequest, device_id: str, diagnostic_id: str) -> HttpResponse:
    device = _device(request, device_id)
    diagnostic_item_add(
        device=device,
        diagnostic_id=diagnostic_id,
        body=json_body(request, max_bytes=DIAGNOSTIC_BODY_MAX, strict=False),
    )
    _version_report(request, device)
    return JsonResponse({})
