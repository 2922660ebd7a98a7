"""Sign a firmware image: ``manage.py sign_firmware --key PRIVATE_KEY_FILE IMAGE``.

Prints the base64 detached ed25519 signature of the image bytes (what boxes verify with the public
key from their configuration). With ``--release ID`` it also stores the signature on that draft
release; with ``--create VERSION --models M1,M2`` it creates the draft release, uploads the image
and signs it in one go (``--publish`` publishes it too). The private key file is PKCS#8 PEM (from
``firmware_keygen``) or the base64 of a raw 32-byte seed.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from django.core.management.base import BaseCommand, CommandError, CommandParser

from fleet.core.audit import Actor
from fleet.core.errors import DomainError
from fleet.firmware import services
from fleet.firmware.models import Release
from fleet.firmware.signing import private_key_load


def load_private_key(path: Path) -> Ed25519PrivateKey:
    try:
        return private_key_load(path)
    except (OSError, ValueError) as exc:
        raise CommandError(str(exc)) from exc


class Command(BaseCommand):
    help = "Print (and optionally store) the detached ed25519 signature of a firmware image."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("image", help="the firmware image file")
        parser.add_argument("--key", required=True, help="the private key file")
        parser.add_argument("--release", help="store the signature on this draft release (id)")
        parser.add_argument("--create", metavar="VERSION", help="create a draft release with this image")
        parser.add_argument("--models", default="", help="hardware models for --create, comma-separated")
        parser.add_argument("--channel", default="stable", help="release channel for --create")
        parser.add_argument("--notes", default="", help="release notes for --create")
        parser.add_argument("--publish", action="store_true", help="publish the release afterwards")

    def handle(self, *args: Any, **options: Any) -> None:

        image = Path(options["image"])
        if not image.is_file():
            raise CommandError(f"{image}: no such file")
        key = load_private_key(Path(options["key"]))
        data = image.read_bytes()
        signature = base64.b64encode(key.sign(data)).decode()
        actor = Actor.system("cli:sign_firmware")
        try:
            release = None
            if options["create"]:
                models = [m.strip() for m in options["models"].split(",") if m.strip()]
                release = services.release_create(
                    actor=actor,
                    version=options["create"],
                    hardware_models=models,
                    channel=options["channel"],
                    notes=options["notes"],
                )
                with image.open("rb") as handle:
                    release = services.release_image_upload(
                        actor=actor, release=release, upload=handle, filename=image.name
                    )
            elif options["release"]:
                release = Release.objects.filter(pk=options["release"]).first()
                if release is None:
                    raise CommandError(f"no release {options['release']}")
            if release is not None:
                release = services.release_update(actor=actor, release=release, signature=signature)
                if options["publish"]:
                    release = services.release_publish(actor=actor, release=release)
                self.stderr.write(f"release {release.version} ({release.pk}): {release.state}")
        except DomainError as exc:
            field = f" ({exc.field})" if exc.field else ""
            raise CommandError(f"{exc.message}{field}") from exc
        self.stdout.write(signature)
