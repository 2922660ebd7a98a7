"""The /1.0 remote access route: ``remoteAccessPrepare`` on the box posts its SSH host key, which lets
the server tell it to connect (``fleet.commands.remote_access``)."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse, JsonResponse

from fleet.commands.remote_access import remote_access_device_key
from fleet.core.errors import DomainError, NotFound
from otbcompat.errors import OtbBadRequest, OtbError, OtbNotFound
from otbcompat.services import device_from_path
from otbcompat.views import json_body, otb_view


def _otb_error(exc: DomainError) -> OtbError:
    message = f"{exc.field}: {exc.message}" if exc.field else exc.message
    return OtbNotFound(message) if isinstance(exc, NotFound) else OtbBadRequest(message)


@otb_view("POST")
def remote_access_keys(request: HttpRequest, device_id: str, remote_access_id: str) -> HttpResponse:
    """``POST devices/{id}/remote_accesses/{ra_id}/keys`` ``{"public_key": "ssh-ed25519 …"}`` → ``{}``."""
    device = device_from_path(request.headers.get("Authorization"), device_id)
    if device.box is None:
        raise OtbNotFound("remote_access_id: remote access not found")
    body = json_body(request)
    if not isinstance(body, dict):
        raise OtbBadRequest("public_key: a JSON object with public_key is required")
    try:
        remote_access_device_key(
            box=device.box, remote_access_id=remote_access_id, public_key=body.get("public_key")
        )
    except DomainError as exc:
        raise _otb_error(exc) from exc
    return JsonResponse({})
