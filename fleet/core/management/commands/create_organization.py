"""``manage.py create_organization NAME --owner EMAIL [--password P]``."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from fleet.core.audit import Actor
from fleet.core.errors import DomainError
from fleet.core.services import organization_create


class Command(BaseCommand):
    help = "Create an organisation and its owner (the user is created if missing)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("name")
        parser.add_argument("--owner", required=True, help="owner email")
        parser.add_argument("--password", default=None, help="password for a newly created owner")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            organization = organization_create(
                actor=Actor.system("cli:create_organization"),
                name=options["name"],
                owner_email=options["owner"],
                owner_password=options["password"],
            )
        except DomainError as exc:
            raise CommandError(f"{exc.field + ': ' if exc.field else ''}{exc.message}") from exc
        self.stdout.write(self.style.SUCCESS(f"created organization {organization.name} ({organization.pk})"))
