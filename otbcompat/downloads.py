"""Unguessable, expiring download addresses for stock OverTheBox boxes.

The box fetches firmware images (and their ``.sig``) with plain curl: no Authorization header, no
cookie. The address itself is the credential: ``<object id>.<expiry>.<HMAC>``, signed with a key
derived from ``SECRET_KEY`` for one purpose, checked in constant time, refused after its expiry. No
state is written to hand one out.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import time

from django.conf import settings

FIRMWARE = "firmware"
# Where fleet.firmware serves the images (mounted under /1.0/ by config/urls.py): the box appends
# ``.sig`` to the image address for the signature.
FIRMWARE_PATH = "/1.0/firmware/{token}/{filename}"
SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]")


def _key(purpose: str) -> bytes:
    return hmac.new(settings.SECRET_KEY.encode(), f"otbcompat-download-{purpose}".encode(), "sha256").digest()


def _mac(purpose: str, object_id: str, expires: int) -> str:
    digest = hmac.new(_key(purpose), f"{object_id}.{expires}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest[:20]).rstrip(b"=").decode("ascii")


def download_token(*, purpose: str, object_id: str, ttl_s: int, now: float | None = None) -> str:
    """A token naming ``object_id`` for ``purpose``, valid ``ttl_s`` seconds."""
    expires = int((now if now is not None else time.time()) + ttl_s)
    return f"{object_id}.{expires}.{_mac(purpose, object_id, expires)}"


def download_token_check(token: str, *, purpose: str, now: float | None = None) -> str | None:
    """The object id of a valid, unexpired token for ``purpose``; None otherwise."""
    parts = token.split(".")
    if len(parts) != 3 or not parts[1].isdigit():
        return None
    object_id, expires_text, given = parts
    expires = int(expires_text)
    if not hmac.compare_digest(given, _mac(purpose, object_id, expires)):
        return None
    if (now if now is not None else time.time()) >= expires:
        return None
    return object_id


def firmware_filename(version: str) -> str:
    """The image's file name in its address; it must end in ``.img.gz`` (the box checks the URL)."""
    return f"otb-{SAFE_NAME.sub('-', version)[:64]}.img.gz"


def firmware_path(*, release_id: str, version: str, ttl_s: int) -> str:
    """The path (to join to the server's base URL) of a release's image for a box."""
    token = download_token(purpose=FIRMWARE, object_id=release_id, ttl_s=ttl_s)
    return FIRMWARE_PATH.format(token=token, filename=firmware_filename(version))
