"""Create the operator's ed25519 firmware signing key pair.

The private key (PKCS#8 PEM, mode 0600) stays with the operator, offline; the public key is printed
as base64 of its 32 raw bytes, the form ``OTB_FIRMWARE_SIGNING_PUBLIC_KEY`` and the boxes expect.
"""

from __future__ import annotations

import base64
import os
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from django.core.management.base import BaseCommand, CommandError, CommandParser


class Command(BaseCommand):
    help = "Create an ed25519 firmware signing key: writes the private key, prints the public key."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("private_key_file", help="where to write the private key (must not exist)")

    def handle(self, *args: Any, **options: Any) -> None:
        path = options["private_key_file"]
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError as exc:
            raise CommandError(f"{path} exists; refusing to overwrite a signing key") from exc
        with os.fdopen(fd, "wb") as handle:
            handle.write(pem)
        public = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        self.stdout.write(base64.b64encode(public).decode())
