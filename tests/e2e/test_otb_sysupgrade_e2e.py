"""Firmware for a stock OverTheBox box, end to end against a real uvicorn (its signing public key set):
an upgrade of ours becomes a ``sysupgrade`` action; the box fetches ``url.sig`` then ``url`` with plain
curl (no Authorization, as otb-action-sysupgrade does) and the signature is checked here as ``usign -V``
checks it (Ed25519 over the image, the key file named by its fingerprint); the upgrade succeeds only
once the box is seen back on the new version, never on ``done`` alone; a failed sysupgrade reported
``error`` then ``done`` (its next start) stays failed; ``release_channel`` points at the image."""

from __future__ import annotations

import base64
import hashlib
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from django.core.files.base import ContentFile
from django.utils import timezone

from fleet.core.audit import Actor
from fleet.core.models import Box
from fleet.firmware.choices import ReleaseState, UpgradeState
from fleet.firmware.engine import upgrades_sync
from fleet.firmware.models import Release, Upgrade
from fleet.firmware.services import box_upgrade_now
from fleet.telemetry.models import BoxStatus
from otbcompat import usign
from otbcompat.models import OtbDevice
from otbcompat.presence import presence_flush
from tests.e2e.browser import LiveServer, asgi_server_start, asgi_server_stop
from tests.e2e.otbbox import linked_device, otb_call

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(shutil.which("curl") is None, reason="curl is needed to call like the box"),
]

KEY = Ed25519PrivateKey.generate()
PUBLIC_B64 = base64.b64encode(KEY.public_key().public_bytes_raw()).decode()


@pytest.fixture(scope="module")
def signing_server(
    django_db_setup: Any, django_db_blocker: Any, tmp_path_factory: Any
) -> Iterator[LiveServer]:
    """uvicorn with OTB_FIRMWARE_SIGNING_PUBLIC_KEY set (the session's server has none)."""
    log_path = tmp_path_factory.mktemp("uvicorn-fw") / "uvicorn.log"
    server = asgi_server_start(log_path, {"OTB_FIRMWARE_SIGNING_PUBLIC_KEY": PUBLIC_B64})
    yield server
    asgi_server_stop(server)


def plain_curl(url: str, out: Path) -> int:
    """The box's download: ``curl -sS --connect-timeout 5 "$url" -o file``: no header of its own."""
    done = subprocess.run(
        ["curl", "-sS", "--connect-timeout", "5", url, "-o", str(out), "-w", "%{http_code}"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return int(done.stdout)


def published_release(model: str, version: str, image: bytes) -> Release:
    release = Release.objects.create(
        version=version,
        hardware_models=[model],
        size=len(image),
        sha256=hashlib.sha256(image).hexdigest(),
        signature=base64.b64encode(KEY.sign(image)).decode(),
    )
    release.image.save(f"{version}.img.gz", ContentFile(image), save=False)
    release.state = ReleaseState.PUBLISHED
    release.published_at = timezone.now()
    release.save()
    return release


def online_device(base: str, box: Box, mac: str) -> dict[str, Any]:
    answer = linked_device(base, box, mac, firmware_version="1.1.3")
    poll_and_flush(base, answer, "1.1.3")
    assert BoxStatus.objects.get(box=box).online
    return answer


def poll_and_flush(base: str, device: dict[str, Any], version: str) -> Any:
    """One poll, then the presence flush once the server has written the poll to Redis (the fast path
    writes once a second)."""
    polled_at = time.time()
    status, action = otb_call(
        base, "GET", f"devices/{device['device_id']}/actions/todo", jwt=device["jwt"], version=version
    )
    assert status == 200, action
    box_id = OtbDevice.objects.get(id=device["device_id"]).box_id
    assert box_id is not None
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        time.sleep(0.3)
        presence_flush()
        seen = BoxStatus.objects.filter(box_id=box_id).values_list("last_seen_at", flat=True).first()
        if seen is not None and seen.timestamp() >= polled_at:
            break
    return action


def test_sysupgrade_end_to_end_judged_by_the_version(
    signing_server: LiveServer, people: Any, claimed_box_factory: Any, tmp_path: Path
) -> None:
    base = signing_server.url
    box = claimed_box_factory(people.org)
    device = online_device(base, box, "00:0d:b9:4a:30:01")
    image = b"\x1f\x8b" + bytes(range(256)) * 64
    release = published_release(box.model, "1.2.0", image)

    upgrade = box_upgrade_now(actor=Actor.for_user(people.owner), box=box, release=release)
    assert upgrade.state == UpgradeState.SENT

    # the box's next poll: sysupgrade with an address ending in .img.gz (otb-action-sysupgrade checks)
    status, action = otb_call(base, "GET", f"devices/{device['device_id']}/actions/todo", jwt=device["jwt"])
    assert status == 200 and action["action"] == "sysupgrade" and action["id"] == str(upgrade.command_id)
    url = action["arguments"]["url"]
    assert re.match(r"^http.*\.img\.gz$", url) and url.startswith(base)

    # .sig first, then the image, with plain curl; then usign -V -m img.gz -P /etc/opkg/keys
    assert plain_curl(url + ".sig", tmp_path / "img.gz.sig") == 200
    assert plain_curl(url, tmp_path / "img.gz") == 200
    assert (tmp_path / "img.gz").read_bytes() == image
    keys = tmp_path / "keys"
    keys.mkdir()
    public = KEY.public_key().public_bytes_raw()
    (keys / usign.fingerprint_name(usign.fingerprint(public))).write_text(usign.public_key_file(public))
    signature_text = (tmp_path / "img.gz.sig").read_text()
    fp, _ = usign.signature_parse(signature_text)
    key_file = keys / usign.fingerprint_name(fp)  # usign finds the key by the signature's fingerprint
    assert usign.verify(image, signature_text, key_file.read_text())
    assert not usign.verify(image[:-1] + b"\x00", signature_text, key_file.read_text())

    # the address expires and cannot be forged: 404
    token = url.split("/")[-2]
    forged = url.replace(token, token[:-2] + ("AA" if not token.endswith("AA") else "BB"))
    assert plain_curl(forged, tmp_path / "x") == 404

    # the box reboots, reports done (deferred), but comes back on the old version: failed
    result = f"devices/{device['device_id']}/actions/{action['id']}"
    assert otb_call(base, "PUT", result, {"status": "done"}, jwt=device["jwt"])[0] == 200
    upgrades_sync()
    assert Upgrade.objects.get(pk=upgrade.pk).state == UpgradeState.REBOOTING  # done alone proves nothing
    poll_and_flush(base, device, "1.1.3")
    upgrades_sync()
    failed = Upgrade.objects.get(pk=upgrade.pk)
    assert failed.state == UpgradeState.FAILED and "1.1.3" in failed.reason

    # a second attempt: back on 1.2.0 (the header, 5 characters) → succeeded
    Box.objects.filter(pk=box.pk).update(firmware_version="1.1.3")
    again = box_upgrade_now(actor=Actor.for_user(people.owner), box=box, release=release)
    status, action = otb_call(base, "GET", f"devices/{device['device_id']}/actions/todo", jwt=device["jwt"])
    assert action["id"] == str(again.command_id)
    otb_call(
        base,
        "PUT",
        f"devices/{device['device_id']}/actions/{action['id']}",
        {"status": "done"},
        jwt=device["jwt"],
    )
    poll_and_flush(base, device, "1.2.0")
    upgrades_sync()
    assert Upgrade.objects.get(pk=again.pk).state == UpgradeState.SUCCEEDED

    # release_channel names the newest image for the box's channel, by an address that works
    status, channel = otb_call(
        base, "GET", f"devices/{device['device_id']}/release_channel", jwt=device["jwt"]
    )
    assert status == 200 and channel["feeds"] == [] and channel["image_url"].endswith(".img.gz")
    assert plain_curl(channel["image_url"], tmp_path / "latest.img.gz") == 200


def test_a_failed_sysupgrade_reported_done_later_stays_failed(
    signing_server: LiveServer, people: Any, claimed_box_factory: Any
) -> None:
    base = signing_server.url
    box = claimed_box_factory(people.org)
    device = online_device(base, box, "00:0d:b9:4a:30:02")
    release = published_release(box.model, "1.2.1", b"\x1f\x8b image")
    upgrade = box_upgrade_now(actor=Actor.for_user(people.owner), box=box, release=release)
    status, action = otb_call(base, "GET", f"devices/{device['device_id']}/actions/todo", jwt=device["jwt"])
    assert status == 200 and action["action"] == "sysupgrade"
    result = f"devices/{device['device_id']}/actions/{action['id']}"
    # usign refused the image: error at once, then done at the next daemon start (action_id was saved)
    assert (
        otb_call(
            base,
            "PUT",
            result,
            {"status": "error", "details": "usign: verification failed\n"},
            jwt=device["jwt"],
        )[0]
        == 200
    )
    assert otb_call(base, "PUT", result, {"status": "done"}, jwt=device["jwt"])[0] == 200
    poll_and_flush(base, device, "1.1.3")
    upgrades_sync()
    failed = Upgrade.objects.get(pk=upgrade.pk)
    assert failed.state == UpgradeState.FAILED and "usign" in failed.reason
