"""``manage.py create_api_token EMAIL --organization NAME [--days N] [--name N]``: prints the token once."""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser

from fleet.core.audit import Actor
from fleet.core.errors import DomainError
from fleet.core.models import Organization
from fleet.core.services import api_token_create


class Command(BaseCommand):
    help = "Issue a personal API token for a member of an organisation; the value is printed once."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("email")
        parser.add_argument("--organization", required=True, help="organisation name")
        parser.add_argument("--days", type=int, default=None, help="lifetime in days (1-365)")
        parser.add_argument("--name", default="cli", help="a label for the token")

    def handle(self, *args: Any, **options: Any) -> None:
        user = get_user_model().objects.filter(email__iexact=options["email"]).first()
        if user is None:
            raise CommandError(f"no user with email {options['email']}")
        organization = Organization.objects.filter(name__iexact=options["organization"]).first()
        if organization is None:
            raise CommandError(f"no organization named {options['organization']}")
        try:
            _, value = api_token_create(
                actor=Actor.system("cli:create_api_token"),
                user=user,
                organization=organization,
                name=options["name"],
                expires_in_days=options["days"],
            )
        except DomainError as exc:
            raise CommandError(f"{exc.field + ': ' if exc.field else ''}{exc.message}") from exc
        self.stdout.write(value)
