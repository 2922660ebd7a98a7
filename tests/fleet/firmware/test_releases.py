"""Release services used by the console's releases page: a draft with its image in one step (size
limit, nothing kept on refusal), signing with the service's own key, and reading a detached
signature file."""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from django.core.files.uploadedfile import SimpleUploadedFile
from otb_agent import ed25519

from fleet.core.audit import Actor
from fleet.core.errors import Conflict, InvalidInput
from fleet.core.models import AuditLog
from fleet.firmware import services
from fleet.firmware.models import Release
from fleet.firmware.signing import signature_from_file
from tests.fleet.firmware.firmware_helpers import PUBLIC_KEY_B64, SIGNING_KEY, sign

IMAGE = b"OTB console firmware " * 5000
STAFF = Actor.system("test:console")


@pytest.fixture
def media(settings: Any, tmp_path: Path) -> Path:
    settings.STORAGES = {
        **settings.STORAGES,
        "default": {
            "BACKEND": "django.core.files.storage.FileSystemStorage",
            "OPTIONS": {"location": str(tmp_path / "media")},
        },
    }
    key_file = tmp_path / "service.key"
    key_file.write_bytes(
        SIGNING_KEY.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    settings.OTB = {
        **settings.OTB,
        "FIRMWARE_SIGNING_PUBLIC_KEY": PUBLIC_KEY_B64,
        "FIRMWARE_SIGNING_KEY_FILE": str(key_file),
    }
    return tmp_path


def upload(data: bytes = IMAGE, name: str = "otb.img") -> SimpleUploadedFile:
    return SimpleUploadedFile(name, data, content_type="application/octet-stream")


@pytest.mark.django_db
def test_release_add_stores_the_image_with_its_checksum(media: Path) -> None:
    # when staff add a release with its image and detached signature
    release = services.release_add(
        actor=STAFF,
        version="24.10.1-otb3",
        hardware_models=["OTB-v2c"],
        upload=upload(),
        signature=sign(IMAGE),
    )

    # then the draft has the image, its size and SHA-256 from the bytes, and can be published
    import hashlib

    assert release.state == "draft" and release.size == len(IMAGE)
    assert release.sha256 == hashlib.sha256(IMAGE).hexdigest()
    with release.image.open("rb") as handle:
        assert handle.read() == IMAGE
    assert services.release_publish(actor=STAFF, release=release).state == "published"


@pytest.mark.django_db
def test_release_add_keeps_nothing_when_refused(media: Path, settings: Any) -> None:
    # given a size limit below the image
    settings.OTB = {**settings.OTB, "FIRMWARE_MAX_IMAGE_BYTES": len(IMAGE) - 1}

    # when staff add it, then it is refused on the image field, and no release nor file is left
    with pytest.raises(InvalidInput) as refused:
        services.release_add(actor=STAFF, version="9.0.0", hardware_models=["OTB-v2c"], upload=upload())
    assert refused.value.field == "image" and "limit" in refused.value.message
    assert not Release.objects.filter(version="9.0.0").exists()
    assert not list((media / "media").rglob("*.img"))

    # and a malformed signature is refused before anything is stored
    settings.OTB = {**settings.OTB, "FIRMWARE_MAX_IMAGE_BYTES": len(IMAGE)}
    with pytest.raises(InvalidInput) as refused:
        services.release_add(
            actor=STAFF, version="9.0.0", hardware_models=["OTB-v2c"], upload=upload(), signature="abc"
        )
    assert refused.value.field == "signature"
    assert not Release.objects.filter(version="9.0.0").exists()


@pytest.mark.django_db
def test_release_sign_with_the_service_key_makes_a_signature_boxes_accept(media: Path) -> None:
    # given a draft with an uploaded image and no signature
    release = services.release_add(actor=STAFF, version="3.0.0", hardware_models=["OTB-v2c"], upload=upload())
    with pytest.raises(InvalidInput):
        services.release_publish(actor=STAFF, release=release)

    # when staff sign it with the service's key
    release = services.release_sign(actor=STAFF, release=release)

    # then the box's own verifier accepts the signature, the release publishes, and it is audited
    ed25519.verify(base64.b64decode(PUBLIC_KEY_B64), base64.b64decode(release.signature), IMAGE)
    assert services.release_publish(actor=STAFF, release=release).state == "published"
    assert AuditLog.objects.filter(action="release.sign", target_id=str(release.pk)).exists()

    # and a published release is not signed again
    with pytest.raises(Conflict) as refused:
        services.release_sign(actor=STAFF, release=release)
    assert refused.value.field == "state"


@pytest.mark.django_db
def test_release_sign_refuses_without_a_key_or_with_a_key_boxes_would_not_trust(
    media: Path, settings: Any
) -> None:
    release = services.release_add(actor=STAFF, version="3.1.0", hardware_models=["OTB-v2c"], upload=upload())

    # without a service key: a Conflict that says to upload a signature
    settings.OTB = {**settings.OTB, "FIRMWARE_SIGNING_KEY_FILE": ""}
    with pytest.raises(Conflict) as refused:
        services.release_sign(actor=STAFF, release=release)
    assert "upload a detached signature" in refused.value.message

    # with a key that is not the pair of the boxes' public key: refused, nothing stored
    other = media / "other.key"
    other.write_text(base64.b64encode(b"\x07" * 32).decode())
    settings.OTB = {**settings.OTB, "FIRMWARE_SIGNING_KEY_FILE": str(other)}
    with pytest.raises(Conflict) as refused:
        services.release_sign(actor=STAFF, release=release)
    assert "OTB_FIRMWARE_SIGNING_PUBLIC_KEY" in refused.value.message
    release.refresh_from_db()
    assert release.signature == ""


def test_signature_file_raw_or_base64() -> None:
    raw = SIGNING_KEY.sign(IMAGE)
    text = base64.b64encode(raw).decode()
    assert signature_from_file(raw) == text
    assert signature_from_file(f"{text}\n".encode()) == text
    for bad in (b"", b"not a signature", base64.b64encode(b"x" * 32), io.BytesIO(b"\xff" * 70).read()):
        with pytest.raises(ValueError):
            signature_from_file(bad)
