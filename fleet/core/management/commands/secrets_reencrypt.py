"""``manage.py secrets_reencrypt [--batch-size N]``: key rotation of the secrets encrypted at rest."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from fleet.core.audit import Actor
from fleet.core.secrets import REENCRYPT_BATCH, secrets_reencrypt

SHOWN_IDS = 20


class Command(BaseCommand):
    help = (
        "Re-encrypt every secret stored encrypted (tunnel keys, webhook secrets, configuration backups) "
        "under the first key of OTB_SECRETS_KEYS. Run it after putting a new key first; remove the old "
        "key only once it reports no undecryptable row."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--batch-size",
            type=int,
            default=REENCRYPT_BATCH,
            help="rows per transaction (default %(default)s)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        batch_size = options["batch_size"]
        if batch_size < 1:
            raise CommandError("--batch-size: a positive number of rows")
        results = secrets_reencrypt(actor=Actor.system("cli:secrets_reencrypt"), batch_size=batch_size)
        failed = []
        for result in results:
            line = f"{result.label}: {result.reencrypted} re-encrypted"
            if result.undecryptable:
                shown = ", ".join(result.undecryptable[:SHOWN_IDS])
                more = " …" if len(result.undecryptable) > SHOWN_IDS else ""
                line += f", {len(result.undecryptable)} undecryptable (ids {shown}{more})"
                failed.append(result.label)
            self.stdout.write(line)
        if failed:
            raise CommandError(
                f"rows of {', '.join(failed)} open with none of the keys in OTB_SECRETS_KEYS: they were "
                "left as they were; keep the old keys until they are dealt with"
            )
        self.stdout.write(self.style.SUCCESS("every secret is now encrypted under the first key"))
