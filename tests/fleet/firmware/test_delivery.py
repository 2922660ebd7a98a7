"""The agent's real firmware code against the real server: it downloads the image from the agent
endpoint (HTTP, agent token), verifies it, and a tampered image (wrong hash or signature) is refused,
so the upgrade fails with that reason."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest
from django.core.files.base import ContentFile
from otb_agent import firmware

from fleet.commands.models import Command
from fleet.commands.services import command_complete, command_progress
from fleet.firmware.choices import UpgradeState
from fleet.firmware.engine import rollouts_tick
from fleet.firmware.models import Release
from fleet.firmware.services import (
    release_create,
    release_image_upload,
    release_publish,
    release_update,
    rollout_create,
    rollout_start,
)
from tests.fleet.firmware.firmware_helpers import ACTOR, PUBLIC_KEY_B64, make_fleet, sign

pytestmark = pytest.mark.django_db(transaction=True)
IMAGE = b"\x7fOTB-FW" + bytes(range(256)) * 600


@pytest.fixture
def media(settings: Any, tmp_path: Path) -> Path:
    settings.STORAGES = {
        **settings.STORAGES,
        "default": {
            "BACKEND": "django.core.files.storage.FileSystemStorage",
            "OPTIONS": {"location": str(tmp_path / "media")},
        },
    }
    settings.OTB = {**settings.OTB, "FIRMWARE_SIGNING_PUBLIC_KEY": ""}
    return tmp_path


def published(signature: str) -> Release:
    release = release_create(actor=ACTOR, version="2.0.0", hardware_models=["OTB-v2c"])
    release = release_image_upload(actor=ACTOR, release=release, upload=ContentFile(IMAGE, name="fw.img"))
    release = release_update(actor=ACTOR, release=release, signature=signature)
    return release_publish(actor=ACTOR, release=release)


def run_agent_upgrade(live_server: Any, token: str, command: Command, state_dir: Path) -> None:
    """What the agent does with the command frame, reporting through the commands services."""

    def progress(pct: int, message: str) -> None:
        command_progress(box_id=command.box_id, command_id=command.pk, progress=pct, message=message)

    try:
        output = firmware.run_upgrade(
            command.params,
            state_dir=str(state_dir),
            server=live_server.url,
            token=token,
            public_key=PUBLIC_KEY_B64,
            apply_command="true",
            progress=progress,
        )
    except firmware.FirmwareError as exc:
        command_complete(box_id=command.box_id, command_id=command.pk, ok=False, output={}, error=str(exc))
    else:
        command_complete(box_id=command.box_id, command_id=command.pk, ok=True, output=output, error=None)


def start_rollout_for_one_box(release: Release, agent_token_factory: Any) -> tuple[str, Command]:
    box = make_fleet(1)[0]
    token = agent_token_factory(box)
    rollout = rollout_create(actor=ACTOR, release=release, name="r", phases=[100], force=True)
    rollout_start(actor=ACTOR, rollout=rollout)
    rollouts_tick()
    return token, Command.objects.get(box=box, kind="firmware_upgrade")


@pytest.mark.parametrize(
    ("tamper", "code"),
    [("image", "sha256_mismatch"), ("signature", "bad_signature")],
)
def test_a_tampered_image_is_refused_and_the_upgrade_fails_with_the_reason(
    media: Path, live_server: Any, agent_token_factory: Any, tmp_path: Path, tamper: str, code: str
) -> None:
    # given a published release whose stored image was altered, or that was signed by another key
    release = published(sign(IMAGE) if tamper == "image" else sign(b"another image"))
    if tamper == "image":
        stored = Path(release.image.path)
        stored.write_bytes(stored.read_bytes()[:-1] + b"\x00")
    token, command = start_rollout_for_one_box(release, agent_token_factory)

    # when the agent runs the command against the server and the engine follows up
    run_agent_upgrade(live_server, token, command, tmp_path / "state")
    rollouts_tick()

    # then the agent refused it and the upgrade failed with that reason
    upgrade = release.upgrades.get()
    assert upgrade.state == UpgradeState.FAILED
    assert upgrade.reason.startswith(f"{code}: ")
    assert not (tmp_path / "state" / "firmware" / f"{hashlib.sha256(IMAGE).hexdigest()}.img").exists()


def test_a_good_image_downloads_from_the_server_and_the_box_is_rebooting(
    media: Path, live_server: Any, agent_token_factory: Any, tmp_path: Path
) -> None:
    # given a correctly signed release
    release = published(sign(IMAGE))
    token, command = start_rollout_for_one_box(release, agent_token_factory)

    # when the agent runs the command
    run_agent_upgrade(live_server, token, command, tmp_path / "state")
    rollouts_tick()

    # then the image was fetched, verified and applied: the upgrade waits for the box to come back
    upgrade = release.upgrades.get()
    assert upgrade.state == UpgradeState.REBOOTING, upgrade.reason
    assert upgrade.rebooting_at is not None
    assert upgrade.downloading_at is None or upgrade.downloading_at <= upgrade.rebooting_at
    path = tmp_path / "state" / "firmware" / f"{hashlib.sha256(IMAGE).hexdigest()}.img"
    assert path.read_bytes() == IMAGE
