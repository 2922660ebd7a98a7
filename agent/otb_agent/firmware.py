"""The ``firmware_upgrade`` command: download (resumable), verify, apply. Stdlib only.

Contract with the server (see docs/firmware-and-rollouts.md):

* ``params`` = ``{"upgrade_id", "release_id", "version", "url", "size", "sha256", "signature"}``.
  ``url`` is either a path on the fleet server (``/api/v1/agent/firmware/<id>/image``, fetched with
  the agent token) or an absolute external URL (fetched without any credential).
* The image is downloaded into ``<state_dir>/firmware/<sha256>.part``; an interrupted download is
  resumed with an HTTP ``Range`` request. A server that ignores the range (200) restarts it.
* The size, the SHA-256 and the detached ed25519 signature (made by ``manage.py sign_firmware``
  over the image bytes, checked against the public key from the box configuration) must all match,
  otherwise the image is deleted and the command fails with ``"<code>: <why>"`` where code is one
  of ``invalid_params``, ``download_failed``, ``size_mismatch``, ``sha256_mismatch``,
  ``bad_signature``, ``no_signing_key``, ``apply_failed``.
* Progress messages start with the stage: ``downloading``, ``verifying``, ``installing``,
  ``rebooting``; the server maps them to the upgrade's state.
* Success of the command means "image applied, rebooting"; the upgrade itself only succeeds when
  the box reconnects on the new version and healthy, which the server decides.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import http.client
import json
import os
import re
import shlex
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

from . import ed25519

ProgressCallback = Callable[[int, str], None]

CHUNK = 64 * 1024
DEFAULT_APPLY_COMMAND = "sysupgrade {image}"
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


class FirmwareError(Exception):
    """The upgrade was refused or failed; ``code`` is machine-readable, ``str()`` is for people."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class UpgradeParams:
    __slots__ = ("release_id", "sha256", "signature", "size", "upgrade_id", "url", "version")

    def __init__(self, params: Dict[str, Any]) -> None:
        if not isinstance(params, dict):
            raise FirmwareError("invalid_params", "params must be an object")
        url = params.get("url")
        if not isinstance(url, str) or not url:
            raise FirmwareError("invalid_params", "url is required")
        if not (url.startswith("/") or url.startswith("https://") or url.startswith("http://")):
            raise FirmwareError("invalid_params", "url must be a server path or an http(s) URL")
        sha256 = params.get("sha256")
        if not isinstance(sha256, str) or not _SHA256_RE.match(sha256.lower()):
            raise FirmwareError("invalid_params", "sha256 must be 64 hex digits")
        size = params.get("size")
        if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
            raise FirmwareError("invalid_params", "size must be a positive integer")
        signature = params.get("signature")
        try:
            sig_bytes = base64.b64decode(signature or "", validate=True)
        except (ValueError, TypeError) as exc:
            raise FirmwareError("invalid_params", "signature must be base64") from exc
        if len(sig_bytes) != 64:
            raise FirmwareError("invalid_params", "signature must be 64 bytes (base64)")
        version = params.get("version")
        if not isinstance(version, str) or not version:
            raise FirmwareError("invalid_params", "version is required")
        self.url = url
        self.sha256 = sha256.lower()
        self.size = size
        self.signature = sig_bytes
        self.version = version
        self.release_id = str(params.get("release_id") or "")
        self.upgrade_id = str(params.get("upgrade_id") or "")


def _no_progress(progress: int, message: str) -> None:
    return None


def image_dir(state_dir: str) -> str:
    path = os.path.join(state_dir, "firmware")
    os.makedirs(path, mode=0o700, exist_ok=True)
    return path


def _resolve(url: str, server: Optional[str], token: Optional[str]) -> urllib.request.Request:
    if url.startswith("/"):
        if not server:
            raise FirmwareError("invalid_params", "a server path needs the server URL")
        request = urllib.request.Request(server.rstrip("/") + url)  # noqa: S310 (http(s) only)
        if token:
            # The agent token only ever goes to our own server, never to an external image host.
            request.add_header("Authorization", "Bearer " + token)
        return request
    return urllib.request.Request(url)  # noqa: S310 (checked: http(s) only)


_CONTENT_RANGE_RE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")


def download(
    params: UpgradeParams,
    *,
    state_dir: str,
    server: Optional[str] = None,
    token: Optional[str] = None,
    progress: ProgressCallback = _no_progress,
    timeout: float = 60.0,
    max_attempts: int = 5,
) -> str:
    """Download the image into the state dir, resuming a partial file; return the complete file's path.

    Progress is reported from 0 to 80 %. Network errors are retried (resuming) ``max_attempts`` times.
    """
    directory = image_dir(state_dir)
    final_path = os.path.join(directory, params.sha256 + ".img")
    part_path = os.path.join(directory, params.sha256 + ".part")
    if os.path.exists(final_path) and os.path.getsize(final_path) == params.size:
        progress(80, "downloading: already downloaded")
        return final_path
    last_error = "no attempt"
    for _attempt in range(max_attempts):
        have = os.path.getsize(part_path) if os.path.exists(part_path) else 0
        if have > params.size:
            os.unlink(part_path)
            have = 0
        if have == params.size:
            break
        request = _resolve(params.url, server, token)
        if have:
            request.add_header("Range", "bytes=%d-" % have)
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 (http(s) only)
                status = response.status
                mode = "ab"
                if have and status == 206:
                    match = _CONTENT_RANGE_RE.match(response.headers.get("Content-Range", ""))
                    if not match or int(match.group(1)) != have:
                        raise FirmwareError("download_failed", "server answered a different range")
                elif status == 200:
                    mode = "wb"  # the server ignored the range: start over
                    have = 0
                else:
                    raise FirmwareError("download_failed", "unexpected HTTP status %d" % status)
                with open(part_path, mode) as handle:
                    last_report = -1
                    while True:
                        chunk = response.read(CHUNK)
                        if not chunk:
                            break
                        have += len(chunk)
                        if have > params.size:
                            raise FirmwareError(
                                "size_mismatch", "image is larger than the announced %d bytes" % params.size
                            )
                        handle.write(chunk)
                        pct = int(80 * have / params.size)
                        if pct != last_report and pct % 5 == 0:
                            last_report = pct
                            progress(pct, "downloading: %d of %d bytes" % (have, params.size))
            if have == params.size:
                break
            last_error = "connection closed after %d of %d bytes" % (have, params.size)
        except FirmwareError:
            _remove(part_path)
            raise
        except urllib.error.HTTPError as exc:
            if exc.code == 416:
                _remove(part_path)  # our partial file does not fit the image any more
                last_error = "HTTP 416"
                continue
            if 400 <= exc.code < 500:
                raise FirmwareError("download_failed", "HTTP %d from the image server" % exc.code) from exc
            last_error = "HTTP %d" % exc.code
        except (OSError, urllib.error.URLError, http.client.HTTPException) as exc:
            last_error = str(exc) or exc.__class__.__name__  # a cut connection: resume from what we have
    else:
        raise FirmwareError("download_failed", last_error)
    os.replace(part_path, final_path)
    progress(80, "downloading: complete")
    return final_path


def sha256_file(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def decode_public_key(public_key: Optional[str]) -> bytes:
    if not public_key:
        raise FirmwareError("no_signing_key", "no firmware signing key in the box configuration")
    try:
        raw = base64.b64decode(public_key, validate=True)
    except (ValueError, TypeError) as exc:
        raise FirmwareError("no_signing_key", "the firmware signing key is not base64") from exc
    if len(raw) != 32:
        raise FirmwareError("no_signing_key", "the firmware signing key must be 32 bytes")
    return raw


def verify_image(
    path: str, params: UpgradeParams, public_key: Optional[str], progress: ProgressCallback = _no_progress
) -> None:
    """Check size, SHA-256 and the ed25519 signature; delete the image and raise if any differs."""
    try:
        key = decode_public_key(public_key)
        progress(82, "verifying: sha256")
        size = os.path.getsize(path)
        if size != params.size:
            raise FirmwareError("size_mismatch", "expected %d bytes, got %d" % (params.size, size))
        actual = sha256_file(path)
        if actual != params.sha256:
            raise FirmwareError("sha256_mismatch", "expected %s, got %s" % (params.sha256, actual))
        progress(86, "verifying: signature")
        with open(path, "rb") as handle:
            try:
                ed25519.verify_stream(key, params.signature, handle)
            except ed25519.BadSignature as exc:
                raise FirmwareError("bad_signature", str(exc)) from exc
    except FirmwareError:
        _remove(path)
        raise


def apply_image(
    path: str, apply_command: Union[str, Sequence[str]] = DEFAULT_APPLY_COMMAND, timeout: float = 600.0
) -> str:
    """Run the apply command (``{image}`` is replaced by the image path); return its output tail."""
    if isinstance(apply_command, str):
        argv: List[str] = shlex.split(apply_command)
    else:
        argv = list(apply_command)
    if not argv:
        raise FirmwareError("apply_failed", "no apply command configured")
    if not any("{image}" in part for part in argv):
        argv.append("{image}")
    argv = [part.replace("{image}", path) for part in argv]
    try:
        completed = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        raise FirmwareError("apply_failed", "%s: %s" % (argv[0], exc)) from exc
    output = (completed.stdout + completed.stderr)[-2000:]
    if completed.returncode != 0:
        raise FirmwareError("apply_failed", "exit %d: %s" % (completed.returncode, output.strip()[-500:]))
    return output


def prepare(
    params: Union[Dict[str, Any], UpgradeParams],
    *,
    state_dir: str,
    server: Optional[str],
    token: Optional[str],
    public_key: Optional[str],
    progress: ProgressCallback = _no_progress,
    timeout: float = 60.0,
) -> "tuple[UpgradeParams, str]":
    """Parse, download and verify; return the parsed params and the verified image path."""
    parsed = params if isinstance(params, UpgradeParams) else UpgradeParams(params)
    decode_public_key(public_key)  # refuse before downloading anything when no key is configured
    path = download(
        parsed, state_dir=state_dir, server=server, token=token, progress=progress, timeout=timeout
    )
    verify_image(path, parsed, public_key, progress)
    return parsed, path


def run_upgrade(
    params: Union[Dict[str, Any], UpgradeParams],
    *,
    state_dir: str,
    server: Optional[str],
    token: Optional[str],
    public_key: Optional[str],
    current_version: str = "",
    apply_command: Union[str, Sequence[str]] = DEFAULT_APPLY_COMMAND,
    progress: ProgressCallback = _no_progress,
    timeout: float = 60.0,
) -> Dict[str, Any]:
    """The whole command for a real box: prepare, apply, report ``rebooting``; return the result output.

    ``params`` are the command's params, as received or already parsed.

    Raises :class:`FirmwareError` (the caller reports ``ok: false`` with ``str(error)``).
    """
    parsed, path = prepare(
        params,
        state_dir=state_dir,
        server=server,
        token=token,
        public_key=public_key,
        progress=progress,
        timeout=timeout,
    )
    progress(90, "installing: %s" % parsed.version)
    output = apply_image(path, apply_command)
    progress(99, "rebooting: into %s" % parsed.version)
    return {
        "stage": "rebooting",
        "from_version": current_version,
        "version": parsed.version,
        "sha256": parsed.sha256,
        "apply_output": output[-500:],
    }


def _remove(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


def cleanup(state_dir: str, keep: Optional[str] = None) -> None:
    """Remove downloaded images except ``keep`` (a sha256), to bound the state dir's size."""
    directory = os.path.join(state_dir, "firmware")
    if not os.path.isdir(directory):
        return
    for name in os.listdir(directory):
        if keep and name.startswith(keep):
            continue
        _remove(os.path.join(directory, name))


def url_is_external(url: str) -> bool:
    return not url.startswith("/") and bool(urllib.parse.urlsplit(url).scheme)


def signing_key_from_config(state_dir: Optional[str]) -> Optional[str]:
    """The firmware signing public key from the box configuration (``config.json`` in the state
    dir, put there by the server), or ``OTB_FIRMWARE_SIGNING_PUBLIC_KEY`` when set locally."""
    if state_dir:
        try:
            with open(os.path.join(state_dir, "config.json"), "r", encoding="utf-8") as handle:
                config = json.load(handle)
            key = config.get("firmware_signing_public_key") if isinstance(config, dict) else None
            if key:
                return str(key)
        except (OSError, ValueError):
            pass
    return os.environ.get("OTB_FIRMWARE_SIGNING_PUBLIC_KEY") or None
