from __future__ import annotations

import logging
import time
from collections.abc import Callable

from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest, JsonResponse

from fleet.core.logging import secrets_redact
from fleet.core.metrics import HTTP_REQUESTS, HTTP_SECONDS
from fleet.core.request_context import new_request_id, request_id_var

http_log = logging.getLogger("otb.http")


class RequestIdMiddleware:
    """Gives every request an id (``X-Request-ID``), visible to logs and the audit log."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        request_id = new_request_id(request.headers.get("X-Request-ID"))
        request.request_id = request_id  # type: ignore[attr-defined]
        token = request_id_var.set(request_id)
        try:
            response = self.get_response(request)
        finally:
            request_id_var.reset(token)
        response["X-Request-ID"] = request_id
        return response


class MetricsMiddleware:
    """Counts every HTTP request by route (the URL pattern, so ids do not explode the label set),
    method and status, observes its duration (``otb_http_requests_total``,
    ``otb_http_request_seconds``), and writes one JSON log line per request (logger ``otb.http``:
    request id, method, route, path without its query string and with a download token redacted
    (``fleet.core.logging.secrets_redact``), status, duration, client address, user and organisation
    when known; never a header, a query string or a body, where secrets travel)."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        started = time.perf_counter()
        response = self.get_response(request)
        match = getattr(request, "resolver_match", None)
        route = f"/{match.route}" if match is not None and match.route else "unmatched"
        method = request.method if request.method in _METHODS else "other"
        elapsed = time.perf_counter() - started
        HTTP_REQUESTS.labels(route, method, str(response.status_code)).inc()
        HTTP_SECONDS.labels(route, method).observe(elapsed)
        if http_log.isEnabledFor(logging.INFO):
            user = getattr(request, "user", None)
            auth = getattr(request, "auth", None)
            http_log.info(
                "http_request",
                extra={
                    "method": request.method,
                    "route": route,
                    "path": secrets_redact(request.path)[:300],
                    "status": response.status_code,
                    "duration_ms": round(elapsed * 1000, 2),
                    "client": request.META.get("REMOTE_ADDR"),
                    "user_id": getattr(user, "pk", None)
                    if getattr(user, "is_authenticated", False)
                    else None,
                    "organization_id": getattr(auth, "organization_id", None),
                },
            )
        return response


_METHODS = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"}


class QueryStringMiddleware:
    """Refuses a query string holding a NUL character, for every filter of every endpoint at once:
    PostgreSQL text cannot hold NUL, so such a value would fail deep in a query (a 500) wherever a
    view filters on it without a form. The API answers 400 in its error shape, naming the field."""

    message = "must not contain NUL characters"

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        for name, values in request.GET.lists():
            if "\x00" in name or any("\x00" in value for value in values):
                return self._refuse(request, name.replace("\x00", "") or "query")
        return self.get_response(request)

    def _refuse(self, request: HttpRequest, field: str) -> HttpResponse:
        if request.path.startswith("/api/"):
            body = {
                "error": {
                    "code": "invalid",
                    "message": f"{field}: {self.message}",
                    "fields": {field: [self.message]},
                }
            }
            return JsonResponse(body, status=400)
        return HttpResponseBadRequest(f"{field}: {self.message}", content_type="text/plain; charset=utf-8")
