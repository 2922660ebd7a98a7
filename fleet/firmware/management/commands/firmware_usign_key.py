"""Print the firmware signing public key in OpenWrt usign format, for stock OverTheBox boxes.

A box verifies an image with ``usign -V -m img.gz -P /etc/opkg/keys``: it needs our public key in that
directory, in the file named by its fingerprint. This prints the file's path on the first line, then
its content, e.g. to install it on a box::

    python manage.py firmware_usign_key > key.txt
    ssh root@box "cat > $(head -1 key.txt)" < <(tail -n +2 key.txt)

The key is ``OTB_FIRMWARE_SIGNING_PUBLIC_KEY`` (or ``--public-key``): the one our releases' signatures
verify with. Rotation: install the new key's file on the boxes next to the old one (both verify) before
the first release signed with the new key is rolled out; remove the old file afterwards.
"""

from __future__ import annotations

from typing import Any, cast

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from otbcompat.usign import UsignError, fingerprint, fingerprint_name, public_key_bytes, public_key_file

KEYS_DIRECTORY = "/etc/opkg/keys"


class Command(BaseCommand):
    help = "Print the firmware public key as a usign key file (path, then content) for OverTheBox boxes."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--public-key", help="base64 of the raw ed25519 public key (default: the setting)"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        encoded = options.get("public_key") or str(
            cast(dict[str, Any], settings.OTB).get("FIRMWARE_SIGNING_PUBLIC_KEY") or ""
        )
        if not encoded:
            raise CommandError("no public key: set OTB_FIRMWARE_SIGNING_PUBLIC_KEY or pass --public-key")
        try:
            public = public_key_bytes(encoded)
        except UsignError as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(f"{KEYS_DIRECTORY}/{fingerprint_name(fingerprint(public))}")
        self.stdout.write(public_key_file(public), ending="")
