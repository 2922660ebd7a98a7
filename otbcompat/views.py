"""The /1.0 edge: parse the box's request, call one service, answer in the box's shape.

Plain Django views (not DRF): the box sends ``Content-Type: application/json`` even on GETs with no
body, follows no redirects and acts only on ``{"class": "Client::…"}`` errors.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt

from otbcompat.actions import action_result, todo_next
from otbcompat.binding import service_associated, service_confirm
from otbcompat.configuration import otb_config_serve
from otbcompat.errors import OtbBadRequest, OtbError
from otbcompat.presence import poll_seen
from otbcompat.services import (
    device_from_path,
    device_service_box,
    device_subscribe,
    jwt_renew,
)
from otbcompat.wire import json_loads

MAX_BODY = 64 * 1024

View = Callable[..., HttpResponse]


def otb_view(*methods: str) -> Callable[[View], View]:
    """Allowed methods, CSRF exemption (bearer-authenticated machines) and OtbError → its JSON body."""

    def decorate(view: View) -> View:
        @csrf_exempt
        @wraps(view)
        def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            if request.method not in methods:
                response = JsonResponse(
                    {"class": "Client::MethodNotAllowed", "message": f"{request.method} is not allowed here"},
                    status=405,
                )
                response["Allow"] = ", ".join(methods)
                return response
            try:
                return view(request, *args, **kwargs)
            except OtbError as exc:
                return JsonResponse(exc.body(), status=exc.status)

        return wrapper

    return decorate


def json_body(request: HttpRequest, *, max_bytes: int = MAX_BODY, strict: bool = True) -> Any:
    raw = request.body
    if len(raw) > max_bytes:
        raise OtbBadRequest(f"the body is larger than {max_bytes} bytes")
    if not raw.strip():
        return None
    try:
        return json_loads(raw, strict=strict)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise OtbBadRequest("the body is not valid JSON") from exc


@otb_view("POST")
def subscribe(request: HttpRequest) -> HttpResponse:
    result = device_subscribe(json_body(request), source_ip=request.META.get("REMOTE_ADDR"))
    return JsonResponse(
        {"device_id": str(result.device.id), "token": result.token, "jwt": result.jwt, "service": None}
    )


@otb_view("POST")
def renew_jwt(request: HttpRequest) -> HttpResponse:
    # The Authorization header (the old JWT, perhaps expired) is ignored on purpose.
    return JsonResponse({"jwt": jwt_renew(json_body(request))})


def base_url(request: HttpRequest) -> str:
    """The scheme and host the box called (download addresses in actions point back at it)."""
    return f"{request.scheme}://{request.get_host()}"


@otb_view("GET")
def actions_todo(request: HttpRequest, device_id: str) -> HttpResponse:
    device = device_from_path(request.headers.get("Authorization"), device_id)
    poll_seen(device=device, version=request.headers.get("X-Overthebox-Version"))
    return JsonResponse(todo_next(device=device, base_url=base_url(request)))


@otb_view("PUT")
def action_report(request: HttpRequest, device_id: str, action_id: str) -> HttpResponse:
    device = device_from_path(request.headers.get("Authorization"), device_id)
    command = action_result(device=device, action_id=action_id, body=json_body(request))
    return JsonResponse({"id": str(command.id), "status": command.state})


def _no_body(request: HttpRequest) -> None:
    """Routes the box calls without a body: an empty body or ``{}`` (anything else is a mistake)."""
    if json_body(request) not in (None, {}):
        raise OtbBadRequest("body: this call takes no body")


@otb_view("GET")
def associated(request: HttpRequest, device_id: str) -> HttpResponse:
    device = device_from_path(request.headers.get("Authorization"), device_id)
    _no_body(request)
    return JsonResponse({"service": service_associated(device=device)})


@otb_view("POST")
def confirm(request: HttpRequest, device_id: str, service_id: str) -> HttpResponse:
    device = device_from_path(request.headers.get("Authorization"), device_id)
    device_service_box(device, service_id)
    _no_body(request)
    service_confirm(device=device)
    return JsonResponse({})


@otb_view("GET")
def config(request: HttpRequest, device_id: str) -> HttpResponse:
    device = device_from_path(request.headers.get("Authorization"), device_id)
    _no_body(request)
    document = otb_config_serve(box=device.box, confirmed=device.confirmed_at is not None)
    return JsonResponse(document)
