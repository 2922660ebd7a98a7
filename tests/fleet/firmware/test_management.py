"""The firmware_keygen and sign_firmware management commands produce a signature boxes accept."""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command
from otb_agent import ed25519

from fleet.firmware.models import Release


@pytest.mark.django_db
def test_keygen_and_sign_firmware_produce_a_signature_boxes_accept(tmp_path: Path, settings: Any) -> None:
    # given a key made by firmware_keygen and an image
    settings.STORAGES = {
        **settings.STORAGES,
        "default": {
            "BACKEND": "django.core.files.storage.FileSystemStorage",
            "OPTIONS": {"location": str(tmp_path / "media")},
        },
    }
    key_file, image = tmp_path / "signing.key", tmp_path / "fw.bin"
    image.write_bytes(b"firmware bytes" * 1000)
    out = io.StringIO()
    call_command("firmware_keygen", str(key_file), stdout=out)
    public = out.getvalue().strip()
    settings.OTB = {**settings.OTB, "FIRMWARE_SIGNING_PUBLIC_KEY": public}
    assert key_file.stat().st_mode & 0o777 == 0o600

    # when signing and creating a published release in one go
    out = io.StringIO()
    call_command(
        "sign_firmware",
        str(image),
        key=str(key_file),
        create="9.9.9",
        models="OTB-v2c",
        publish=True,
        stdout=out,
    )
    signature = out.getvalue().strip()

    # then the agent's verifier accepts it, and the release is published with it
    ed25519.verify(base64.b64decode(public), base64.b64decode(signature), image.read_bytes())
    release = Release.objects.get(version="9.9.9")
    assert release.state == "published" and release.signature == signature and release.size == 14000
    # and keygen refuses to overwrite a key
    from django.core.management.base import CommandError

    with pytest.raises(CommandError):
        call_command("firmware_keygen", str(key_file), stdout=io.StringIO())
