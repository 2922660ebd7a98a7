"""The console's releases page: upload an image (size limit, streamed), sign it with the service's key
or a detached signature, publish, withdraw; errors on the field; staff only."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from otb_agent import ed25519

from fleet.firmware.models import Release
from tests.fleet.firmware.firmware_helpers import PUBLIC_KEY_B64, SIGNING_KEY, sign

pytestmark = pytest.mark.django_db
IMAGE = b"console image bytes " * 3000


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


def staff(people: Any) -> Client:
    client = Client()
    client.force_login(people.staff)
    return client


def new_release(client: Client, version: str = "24.10.1-otb3", image: bytes = IMAGE, **extra: Any) -> Any:
    data = {
        "version": version,
        "hardware_models": "OTB-v2c, OTB-v2b",
        "channel": "stable",
        "notes": "",
        "image": SimpleUploadedFile("otb.img", image),
        **extra,
    }
    return client.post("/console/releases/", data)


def test_releases_are_for_staff_only(people: Any) -> None:
    for user in (people.owner, people.viewer):
        client = Client()
        client.force_login(user)
        assert client.get("/console/releases/").status_code == 403
        assert new_release(client).status_code == 403
    assert not Release.objects.exists()


def test_upload_sign_with_the_service_key_publish_and_withdraw(people: Any, media: Path) -> None:
    client = staff(people)

    # when staff upload an image
    response = new_release(client)
    release = Release.objects.get(version="24.10.1-otb3")
    assert response.status_code == 302 and response["Location"] == f"/console/releases/{release.pk}/"

    # then the release page shows its size and SHA-256, as a draft not signed yet
    page = client.get(response["Location"]).content.decode()
    assert hashlib.sha256(IMAGE).hexdigest() in page and f"{len(IMAGE):,} bytes" in page
    assert "Not signed" in page and "Sign with the service's key" in page
    assert release.hardware_models == ["OTB-v2c", "OTB-v2b"]

    # when they sign it with the service's key and publish
    client.post(f"/console/releases/{release.pk}/sign/")
    client.post(f"/console/releases/{release.pk}/publish/")
    release.refresh_from_db()
    assert release.state == "published"
    ed25519.verify(base64.b64decode(PUBLIC_KEY_B64), base64.b64decode(release.signature), IMAGE)

    # then "New rollout" lists it
    assert "24.10.1-otb3" in client.get("/console/rollouts/new/").content.decode()

    # and withdrawing needs a reason, shown next to the field
    response = client.post(f"/console/releases/{release.pk}/withdraw/", {"reason": ""})
    assert response.status_code == 400
    assert 'id="id_reason-errors"' in response.content.decode() or "errorlist" in response.content.decode()
    client.post(f"/console/releases/{release.pk}/withdraw/", {"reason": "bricks OTB-v2b"})
    release.refresh_from_db()
    assert release.state == "withdrawn" and release.withdrawn_reason == "bricks OTB-v2b"


def test_a_detached_signature_file_then_publish(people: Any, media: Path) -> None:
    client = staff(people)
    raw_signature = SIGNING_KEY.sign(IMAGE)
    response = new_release(client, signature=SimpleUploadedFile("otb.img.sig", raw_signature))
    assert response.status_code == 302
    release = Release.objects.get()
    assert release.signature == base64.b64encode(raw_signature).decode()
    client.post(f"/console/releases/{release.pk}/publish/")
    release.refresh_from_db()
    assert release.state == "published"


def test_a_wrong_signature_is_refused_when_publishing(people: Any, media: Path) -> None:
    client = staff(people)
    new_release(client)
    release = Release.objects.get()
    response = client.post(
        f"/console/releases/{release.pk}/signature/", {"signature": sign(b"another image")}
    )
    assert response.status_code == 302
    response = client.post(f"/console/releases/{release.pk}/publish/", follow=True)
    assert "does not verify" in response.content.decode()
    release.refresh_from_db()
    assert release.state == "draft"


def test_form_errors_are_on_their_fields_and_nothing_is_kept(people: Any, media: Path, settings: Any) -> None:
    client = staff(people)

    # an image over the limit: refused on the image field; nothing stored
    settings.OTB = {**settings.OTB, "FIRMWARE_MAX_IMAGE_BYTES": 1000}
    response = new_release(client, image=b"x" * (2 << 20))
    content = response.content.decode()
    assert (
        response.status_code == 400
        and 'id="id_image-errors"' in content
        and "larger than the limit" in content
    )
    assert not Release.objects.exists() and not list((media / "media").rglob("*"))

    # a bad version, no model, a file that is no signature: each on its field
    settings.OTB = {**settings.OTB, "FIRMWARE_MAX_IMAGE_BYTES": 1 << 30}
    response = new_release(
        client, version="no spaces please", hardware_models="", signature=SimpleUploadedFile("s", b"nope")
    )
    content = response.content.decode()
    assert response.status_code == 400
    assert 'id="id_hardware_models-errors"' in content and 'id="id_signature-errors"' in content
    response = new_release(client, version="no spaces please")
    assert response.status_code == 400 and 'id="id_version-errors"' in response.content.decode()
    assert not Release.objects.exists()

    # the same version twice: on the version field
    assert new_release(client, version="1.0.0").status_code == 302
    response = new_release(client, version="1.0.0")
    assert response.status_code == 400 and 'id="id_version-errors"' in response.content.decode()

    # a signature form with nothing in it, or garbage
    release = Release.objects.get()
    response = client.post(f"/console/releases/{release.pk}/signature/", {"signature": ""})
    assert (
        response.status_code == 400
        and "Choose a signature file or paste the signature" in response.content.decode()
    )
    response = client.post(f"/console/releases/{release.pk}/signature/", {"signature": "abc"})
    assert response.status_code == 400 and 'id="id_signature-errors"' in response.content.decode()


def test_the_demo_seeds_a_published_release_that_new_rollout_lists(
    people: Any, media: Path, settings: Any
) -> None:
    from tests.conftest import management_command_run as run

    settings.VAR_DIR = media
    status, output = run("seed_demo")
    assert status == 0 and "release: 24.10.1-otb.1 published" in output
    release = Release.objects.get(version="24.10.1-otb.1")
    ed25519.verify(
        base64.b64decode(PUBLIC_KEY_B64), base64.b64decode(release.signature), release.image.open("rb").read()
    )
    assert "24.10.1-otb.1" in staff(people).get("/console/rollouts/new/").content.decode()
    # and a second run changes nothing
    status, output = run("seed_demo")
    assert status == 0 and Release.objects.count() == 1


def test_the_demo_without_a_service_key_leaves_a_draft_and_says_so(media: Path, settings: Any) -> None:
    from tests.conftest import management_command_run as run

    settings.VAR_DIR = media
    settings.OTB = {**settings.OTB, "FIRMWARE_SIGNING_KEY_FILE": ""}
    status, output = run("seed_demo")
    assert status == 0 and "left as a draft" in output
    assert Release.objects.get().state == "draft"
