"""One JSON error shape for every API failure:
``{"error": {"code": ..., "message": ..., "fields": {"<field>": ["..."]}}}``.

DRF's exception handler covers the views; the handlers below (``handler400/403/404/500`` in
config/urls.py) cover what fails before or outside a view under ``/api/`` (an unknown path, a path
parameter that is not a UUID, a refused Host, an unexpected error), so a client generated from the
schema never meets an HTML page there. Other paths keep Django's pages."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import RequestDataTooBig
from django.core.exceptions import ValidationError as DjangoValidationError
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.views import defaults
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from fleet.core.errors import DomainError, RateLimited


def _flatten(detail: Any, prefix: str = "") -> dict[str, list[str]]:
    fields: dict[str, list[str]] = {}
    if isinstance(detail, dict):
        for key, value in detail.items():
            if isinstance(key, int):  # an item of a list (DRF keys a list's errors by index)
                name = f"{prefix}[{key}]"
            elif key == "non_field_errors":  # about the object itself: named by where it is
                name = prefix or "non_field_errors"
            else:
                name = f"{prefix}.{key}" if prefix else str(key)
            fields.update(_flatten(value, name))
    elif isinstance(detail, list):
        if all(not isinstance(item, dict | list) for item in detail):
            fields[prefix or "non_field_errors"] = [str(item) for item in detail]
        else:
            for index, item in enumerate(detail):
                if item:
                    fields.update(_flatten(item, f"{prefix}[{index}]"))
    else:
        fields[prefix or "non_field_errors"] = [str(detail)]
    return fields


def error_response(
    status_code: int, code: str, message: str, fields: dict[str, list[str]] | None = None
) -> Response:
    body: dict[str, Any] = {"code": code, "message": message}
    if fields:
        body["fields"] = fields
    return Response({"error": body}, status=status_code)


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    response: Response | None
    if isinstance(exc, DomainError):
        response = Response({"error": exc.as_dict()}, status=exc.status)
        if isinstance(exc, RateLimited):
            response["Retry-After"] = str(exc.retry_after_s)
        return response
    if isinstance(exc, RequestDataTooBig):
        return error_response(status.HTTP_413_REQUEST_ENTITY_TOO_LARGE, "too_large", "request body too large")
    if isinstance(exc, DjangoValidationError):
        detail = exc.message_dict if hasattr(exc, "error_dict") else {"non_field_errors": exc.messages}
        return error_response(400, "invalid", "invalid input", _flatten(detail))
    if isinstance(exc, Http404):
        exc = exceptions.NotFound()
    response = drf_exception_handler(exc, context)
    if response is None:
        return None
    if isinstance(exc, exceptions.ValidationError):
        fields = _flatten(exc.detail)
        first = next(iter(fields.items()), None)
        message = f"{first[0]}: {first[1][0]}" if first else "invalid input"
        response.data = {"error": {"code": "invalid", "message": message, "fields": fields}}
    elif isinstance(exc, exceptions.ParseError):
        response.data = {"error": {"code": "malformed_body", "message": str(exc.detail)}}
    elif isinstance(exc, exceptions.APIException):
        code = exc.get_codes() if isinstance(exc.get_codes(), str) else exc.default_code
        response.data = {"error": {"code": code, "message": str(exc.detail)}}
    return response


API_PATH_PREFIX = "/api/"


def _error_json(status_code: int, code: str, message: str) -> JsonResponse:
    return JsonResponse({"error": {"code": code, "message": message}}, status=status_code)


def bad_request_handler(request: HttpRequest, exception: Exception) -> HttpResponse:
    if request.path.startswith(API_PATH_PREFIX):
        return _error_json(400, "bad_request", "the request could not be understood")
    return defaults.bad_request(request, exception)


def permission_denied_handler(request: HttpRequest, exception: Exception) -> HttpResponse:
    if request.path.startswith(API_PATH_PREFIX):
        return _error_json(403, "permission_denied", "you may not do this")
    return defaults.permission_denied(request, exception)


def not_found_handler(request: HttpRequest, exception: Exception) -> HttpResponse:
    if request.path.startswith(API_PATH_PREFIX):
        return _error_json(404, "not_found", "no such endpoint or object")
    return defaults.page_not_found(request, exception)


def server_error_handler(request: HttpRequest) -> HttpResponse:
    if request.path.startswith(API_PATH_PREFIX):
        return _error_json(500, "server_error", "internal error (reported with the request id)")
    return defaults.server_error(request)
