"""Firmware for stock OverTheBox boxes (the /1.0 protocol): their image downloads, their ``.sig`` in
OpenWrt usign format, and ``release_channel``.

The ``sysupgrade`` action (otbcompat/actions.py) gives the box an expiring, unguessable address of
the image (``otbcompat.downloads``); the box fetches ``<url>.sig`` then ``<url>`` with plain curl (no
Authorization header, no redirect followed) and checks it with ``usign -V -m img.gz -P
/etc/opkg/keys``. The ``.sig`` is built from the release's own Ed25519 signature (the one agents
verify) and ``OTB_FIRMWARE_SIGNING_PUBLIC_KEY``: usign signs with plain Ed25519 too, so one signature
serves both kinds of box and no private key is needed here (otbcompat/usign.py).
"""

from __future__ import annotations

import json
import logging
from typing import Any, cast

from django.conf import settings
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.http.response import HttpResponseBase

from fleet.firmware.apis import _stream
from fleet.firmware.choices import ReleaseState
from fleet.firmware.delivery import MAX_COMMAND_TTL_S
from fleet.firmware.models import Release
from fleet.firmware.services import latest_release_for
from otbcompat.downloads import FIRMWARE, download_token_check, firmware_filename, firmware_path
from otbcompat.errors import OtbForbidden
from otbcompat.selectors import otb_release_feeds
from otbcompat.services import device_from_path
from otbcompat.usign import UsignError, signature_file_from_b64
from otbcompat.views import otb_view

logger = logging.getLogger(__name__)
SIG_SUFFIX = ".sig"


def _not_found() -> HttpResponse:
    return HttpResponse("not found\n", status=404, content_type="text/plain")


def _release_of(token: str, filename: str) -> tuple[Release, bool] | None:
    """The release a valid token names and whether the ``.sig`` is asked; None for anything else (an
    expired or forged token, another file name, a release no longer published or without our image)."""
    release_id = download_token_check(token, purpose=FIRMWARE)
    if release_id is None:
        return None
    release = Release.objects.filter(pk=release_id).first() if _uuid_like(release_id) else None
    if release is None or release.state != ReleaseState.PUBLISHED or not release.image:
        return None
    image_name = firmware_filename(release.version)
    if filename == image_name:
        return release, False
    if filename == image_name + SIG_SUFFIX:
        return release, True
    return None


def _uuid_like(value: str) -> bool:
    return len(value) == 36 and all(ch in "0123456789abcdef-" for ch in value.lower())


def otb_firmware_download(request: HttpRequest, token: str, filename: str) -> HttpResponseBase:
    """GET the image or its usign signature by the address handed out in a ``sysupgrade`` action."""
    if request.method not in ("GET", "HEAD"):
        response = HttpResponse(status=405)
        response["Allow"] = "GET, HEAD"
        return response
    found = _release_of(token, filename)
    if found is None:
        return _not_found()
    release, signature = found
    if signature:
        public_key = str(cast(dict[str, Any], settings.OTB).get("FIRMWARE_SIGNING_PUBLIC_KEY") or "")
        try:
            text = signature_file_from_b64(release.signature, public_key)
        except UsignError:
            return _not_found()
        response = HttpResponse(text, content_type="text/plain")
        response["Cache-Control"] = "private, no-store"
        return response
    size = release.size or release.image.size
    streamed = StreamingHttpResponse(
        _stream(release.image.open("rb"), 0, size) if request.method == "GET" else iter(()),
        content_type="application/octet-stream",
    )
    streamed["Content-Length"] = str(size)
    streamed["ETag"] = f'"{release.sha256}"'
    streamed["Cache-Control"] = "private, no-store"
    return streamed


@otb_view("GET")
def release_channel(request: HttpRequest, device_id: str) -> HttpResponse:
    """``GET devices/{id}/release_channel`` → ``{"feeds": [...], "image_url": ...}`` from the box's
    release channel (the newest published image that fits it, by an expiring address)."""
    device = device_from_path(request.headers.get("Authorization"), device_id)
    box = device.box
    if box is None:
        raise OtbForbidden("this device is not linked to a box yet")
    release = latest_release_for(box)
    image_url = None
    if release is not None and release.image:
        path = firmware_path(release_id=str(release.pk), version=release.version, ttl_s=MAX_COMMAND_TTL_S)
        image_url = f"{request.scheme}://{request.get_host()}{path}"
    return HttpResponse(
        json.dumps({"feeds": otb_release_feeds(box=box), "image_url": image_url}),
        content_type="application/json",
    )
