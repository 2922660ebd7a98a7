"""Helpers for the firmware and rollout tests: a bulk-made fleet with live statuses, signed releases,
and a responder that plays the boxes' side of the upgrade (command progress/result through the
commands services, then the reconnect a real agent makes after rebooting: new boot id, version,
health in BoxStatus)."""

from __future__ import annotations

import base64
import hashlib
import itertools
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from django.db.models import F
from django.utils import timezone

from fleet.commands.choices import CommandKind, CommandState
from fleet.commands.models import Command
from fleet.commands.services import command_complete, command_progress
from fleet.core.audit import Actor
from fleet.core.choices import BoxState
from fleet.core.models import Box, Organization
from fleet.firmware.models import Release
from fleet.firmware.services import release_create, release_publish
from fleet.telemetry.models import BoxStatus

ACTOR = Actor.system("test")
_sequence = itertools.count(1)
SIGNING_KEY = Ed25519PrivateKey.from_private_bytes(hashlib.sha256(b"otb-test-signing-key").digest())
PUBLIC_KEY_B64 = base64.b64encode(
    SIGNING_KEY.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
).decode()


def sign(data: bytes) -> str:
    return base64.b64encode(SIGNING_KEY.sign(data)).decode()


def make_organization(name: str | None = None, timezone_name: str = "Europe/Paris") -> Organization:
    index = next(_sequence)
    return Organization.objects.create(
        name=name or f"Fw Org {index} {uuid.uuid4().hex[:6]}",
        slug=f"fw-org-{uuid.uuid4().hex[:10]}",
        timezone=timezone_name,
    )


def make_fleet(
    count: int,
    *,
    organization: Organization | None = None,
    model: str = "OTB-v2c",
    version: str = "1.0.0",
    online: bool = True,
    **fields: Any,
) -> list[Box]:
    """``count`` claimed boxes (bulk) with a live status row each (online, healthy, booted)."""
    organization = organization or make_organization()
    prefix = uuid.uuid4().hex[:8]
    boxes = [
        Box(
            serial=f"FW-{prefix}-{i:06d}",
            model=model,
            state=BoxState.CLAIMED,
            organization=organization,
            firmware_version=version,
            **fields,
        )
        for i in range(count)
    ]
    Box.objects.bulk_create(boxes, batch_size=2000)
    now = timezone.now()
    BoxStatus.objects.bulk_create(
        [
            BoxStatus(
                box=box,
                online=online,
                session_id=uuid.uuid4().hex if online else "",
                connected_at=now if online else None,
                last_seen_at=now,
                boot_id=uuid.uuid4().hex,
                firmware_version=version,
                tunnel_up=True,
                wans_up=2,
                wans_total=2,
            )
            for box in boxes
        ],
        batch_size=2000,
    )
    return boxes


def make_release(
    version: str = "2.0.0",
    *,
    models: list[str] | None = None,
    channel: str = "stable",
    image: bytes | None = None,
    publish: bool = True,
) -> Release:
    """A release hosted at an external URL (no storage needed), signed with the test key."""
    image = image if image is not None else f"image of {version}".encode()
    release = release_create(
        actor=ACTOR,
        version=version,
        hardware_models=models or ["OTB-v2c"],
        channel=channel,
        external_url=f"https://images.example.net/{version}.img",
        size=len(image),
        sha256=hashlib.sha256(image).hexdigest(),
        signature=sign(image),
    )
    if publish:
        release = release_publish(actor=ACTOR, release=release)
    return release


def set_online(box_ids: Iterable[Any], online: bool = True) -> None:
    now = timezone.now()
    BoxStatus.objects.filter(box_id__in=list(box_ids)).update(
        online=online,
        connected_at=now if online else None,
        disconnected_at=None if online else now,
        offline_since=None if online else now,
    )


@dataclass
class Responder:
    """Plays the boxes: takes every open ``firmware_upgrade`` command and answers like an agent.

    ``fail_fraction`` of the commands (exactly, by count) fail with ``fail_error``; boxes in
    ``come_back_old`` reboot onto their old version; boxes in ``come_back_unhealthy`` come back on the
    new version with the tunnel down; boxes in ``silent`` never answer.
    """

    fail_fraction: float = 0.0
    fail_error: str = "apply_failed: simulated failure"
    come_back_old: set[Any] = field(default_factory=set)
    come_back_unhealthy: set[Any] = field(default_factory=set)
    silent: set[Any] = field(default_factory=set)
    handled: int = 0
    failed: int = 0
    seen: set[Any] = field(default_factory=set)

    def _should_fail(self) -> bool:
        before = int(self.handled * self.fail_fraction)
        after = int((self.handled + 1) * self.fail_fraction)
        return after > before

    def telemetry(self) -> None:
        """Every online box sends a telemetry message (the ack watermark moves), as agents do."""
        BoxStatus.objects.filter(online=True).update(last_seq=F("last_seq") + 1)

    def respond(self) -> int:
        self.telemetry()
        commands = list(
            Command.objects.filter(
                kind=CommandKind.FIRMWARE_UPGRADE,
                state__in=[CommandState.PENDING, CommandState.SENT],
            )
            .exclude(pk__in=self.seen)
            .exclude(box_id__in=self.silent)
            .order_by("created_at", "id")
        )
        online = set(
            BoxStatus.objects.filter(box_id__in=[c.box_id for c in commands], online=True).values_list(
                "box_id", flat=True
            )
        )
        answered = 0
        for command in commands:
            if command.box_id not in online:
                continue  # an offline box gets it at its next hello
            self.seen.add(command.pk)
            version = command.params["version"]
            command_progress(
                box_id=command.box_id, command_id=command.pk, progress=40, message="downloading: 40 %"
            )
            command_progress(
                box_id=command.box_id, command_id=command.pk, progress=85, message="verifying: signature"
            )
            if self._should_fail():
                self.failed += 1
                command_complete(
                    box_id=command.box_id, command_id=command.pk, ok=False, output={}, error=self.fail_error
                )
            else:
                command_progress(
                    box_id=command.box_id, command_id=command.pk, progress=99, message="rebooting: into new"
                )
                command_complete(
                    box_id=command.box_id,
                    command_id=command.pk,
                    ok=True,
                    output={"stage": "rebooting", "version": version},
                    error=None,
                )
                self.reboot(command.box_id, version)
            self.handled += 1
            answered += 1
        return answered

    def reboot(self, box_id: Any, version: str) -> None:
        """The box comes back after its reboot: new boot id and session, as its hello reports."""
        status = BoxStatus.objects.get(box_id=box_id)
        status.boot_id = uuid.uuid4().hex
        status.session_id = uuid.uuid4().hex
        status.online = True
        status.connected_at = timezone.now()
        if box_id not in self.come_back_old:
            status.firmware_version = version
        if box_id in self.come_back_unhealthy:
            status.tunnel_up = False
            status.wans_up = 0
        status.save()
