"""The /1.0 backup routes: a stock box's ``backup`` action uploads its text files one per call, its
``restore`` action asks for a download link and pipes the tar.gz behind it into
``sysupgrade --restore-backup -``. The data lives in ``fleet.commands`` (``Backup``), shared with
``otb-agent`` boxes."""

from __future__ import annotations

import json
from typing import Any

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.urls import reverse

from fleet.commands.backup_apis import backup_archive_response
from fleet.commands.backups import (
    backup_archive_token,
    backup_file_put,
    backup_from_archive_token,
    backup_get_for_box,
    backup_setting,
    backup_start,
)
from fleet.core.errors import DomainError, NotFound
from otbcompat.errors import OtbBadRequest, OtbError, OtbNotFound
from otbcompat.services import device_from_path, device_service_box
from otbcompat.views import json_body, otb_view


def _otb_error(exc: DomainError) -> OtbError:
    """A domain error in the box's shape, the field first in the message."""
    message = f"{exc.field}: {exc.message}" if exc.field else exc.message
    if isinstance(exc, NotFound):
        return OtbNotFound(message)
    return OtbBadRequest(message)


def _file_body(request: HttpRequest) -> Any:
    """One file's JSON, up to a few times the file size limit (escapes swell it). Control characters
    inside strings are tolerated: a body written by hand may keep the file's newlines literally."""
    limit = min(4 * backup_setting("BACKUP_MAX_FILE_BYTES") + 16384, settings.DATA_UPLOAD_MAX_MEMORY_SIZE)
    try:
        declared = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        declared = 0
    if declared > limit:
        raise OtbBadRequest(f"content: the body is larger than {limit} bytes")
    raw = request.body
    if len(raw) > limit:
        raise OtbBadRequest(f"content: the body is larger than {limit} bytes")
    try:
        return json.loads(raw, strict=False)
    except (ValueError, UnicodeDecodeError) as exc:
        raise OtbBadRequest("body: not valid JSON") from exc


@otb_view("POST")
def backups(request: HttpRequest, device_id: str, service_id: str) -> HttpResponse:
    """``POST devices/{id}/service/{sid}/backups`` ``{"device_action_id"}`` → ``{"backup_id"}``."""
    box = device_service_box(device_from_path(request.headers.get("Authorization"), device_id), service_id)
    body = json_body(request)
    if not isinstance(body, dict) or body.get("device_action_id") in (None, ""):
        raise OtbBadRequest("device_action_id: the id of the backup action is required")
    try:
        backup = backup_start(box=box, device_action_id=body["device_action_id"])
    except DomainError as exc:
        raise _otb_error(exc) from exc
    return JsonResponse({"backup_id": str(backup.pk)})


@otb_view("PUT", "GET")
def backup(request: HttpRequest, device_id: str, service_id: str, backup_id: str) -> HttpResponse:
    """``PUT …/backups/{bid}``: one file; ``GET …/backups/{bid}`` → ``{"backup_url"}``, a link to the
    tar.gz that works without credentials for ``BACKUP_URL_TTL_S``."""
    box = device_service_box(device_from_path(request.headers.get("Authorization"), device_id), service_id)
    try:
        if request.method == "GET":
            found = backup_get_for_box(box_id=box.pk, backup_id=backup_id)
            path = reverse("otbcompat:backup-archive", args=[backup_archive_token(backup=found)])
            return JsonResponse({"backup_url": request.build_absolute_uri(path)})
        file = backup_file_put(box=box, backup_id=backup_id, raw=_file_body(request))
    except DomainError as exc:
        raise _otb_error(exc) from exc
    return JsonResponse({"backup_id": backup_id, "filename": file.filename})


@otb_view("GET")
def backup_archive(request: HttpRequest, token: str) -> HttpResponse:
    """The tar.gz behind a ``backup_url`` (plain curl: no JWT; the signed, dated token is the key)."""
    try:
        return backup_archive_response(backup_from_archive_token(token))
    except DomainError as exc:
        raise _otb_error(exc) from exc
