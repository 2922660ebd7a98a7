"""Bearer-token authentication for the three kinds of API caller that are not a browser session:
on-box agents, aggregation servers and people's personal API tokens.

The principal for an agent or server is a small object, not a Django user, so that permission
classes and selectors can tell callers apart and a box token can never act as a person.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from uuid import UUID

from django.db.models import OuterRef, Subquery
from django.utils import timezone
from rest_framework import authentication, exceptions
from rest_framework.request import Request

from fleet.models import AgentCredential, ApiToken, Box, Membership
from fleet.tokens import TokenKind, digest, token_kind


@dataclass
class AgentPrincipal:
    """An authenticated on-box agent."""

    box: Box
    credential_id: Any
    is_authenticated: bool = True
    is_active: bool = True
    is_staff: bool = False
    is_superuser: bool = False
    pk: None = None

    def __str__(self) -> str:
        return f"box:{self.box.serial}"


@dataclass
class ServerPrincipal:
    """An authenticated aggregation server."""

    server: Any
    is_authenticated: bool = True
    is_active: bool = True
    is_staff: bool = False
    is_superuser: bool = False
    pk: None = None

    def __str__(self) -> str:
        return f"server:{self.server.name}"


def bearer_token(header: str | None) -> str | None:
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer":
        return None
    value = value.strip()
    return value or None


def _live_credentials(value: str) -> Any:
    """The agent credential of a token if it is live: not revoked, and its box not decommissioned."""
    return AgentCredential.objects.filter(
        token_hash=digest(value), revoked_at__isnull=True, box__decommissioned_at__isnull=True
    ).order_by()


def agent_box_of_token(value: str) -> tuple[UUID, UUID | None, str] | None:
    """(box id, organisation id, serial) of a live agent token, or None: read as three columns (the
    websocket connect of every session of a reconnect storm needs no more, and compiling and loading
    the whole box was most of its cost)."""
    found = list(_live_credentials(value).values_list("box_id", "box__organization_id", "box__serial")[:1])
    return found[0] if found else None


def agent_from_token(value: str) -> AgentPrincipal | None:
    """The live agent credential for a token, with its box, in one query; None if unknown/revoked."""
    credential = _live_credentials(value).select_related("box").first()
    if credential is None:
        return None
    return AgentPrincipal(box=credential.box, credential_id=credential.id)


class BearerTokenAuthentication(authentication.BaseAuthentication):
    keyword = "Bearer"

    def authenticate(self, request: Request) -> tuple[Any, Any] | None:
        value = bearer_token(request.headers.get("Authorization"))
        if value is None:
            return None
        if len(value) > 200:
            raise exceptions.AuthenticationFailed("invalid token")
        kind = token_kind(value)
        if kind == TokenKind.AGENT:
            principal = agent_from_token(value)
            if principal is None:
                raise exceptions.AuthenticationFailed("invalid or revoked agent token")
            return principal, None
        if kind == TokenKind.SERVER:
            from provisioning.models import AggregationServer

            server = AggregationServer.objects.filter(token_hash=digest(value)).first()
            if server is None:
                raise exceptions.AuthenticationFailed("invalid or revoked server token")
            return ServerPrincipal(server=server), None
        if kind == TokenKind.USER:
            return self._user_token(value)
        raise exceptions.AuthenticationFailed("invalid token")

    def _user_token(self, value: str) -> tuple[Any, ApiToken]:
        now = timezone.now()
        # One query for the token, its user and organisation, and the user's role there (read by
        # ``fleet.access`` instead of querying the membership again on every request).
        member_role = Membership.objects.filter(
            user_id=OuterRef("user_id"), organization_id=OuterRef("organization_id")
        ).values("role")[:1]
        token = next(
            iter(
                ApiToken.objects.select_related("user", "organization")
                .annotate(member_role=Subquery(member_role))
                .filter(token_hash=digest(value), revoked_at__isnull=True)
                .order_by()[:1]
            ),
            None,
        )
        if token is None or token.expires_at <= now or not token.user.is_active:
            raise exceptions.AuthenticationFailed("invalid, expired or revoked API token")
        if token.last_used_at is None or now - token.last_used_at > timedelta(minutes=5):
            ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
        return token.user, token

    def authenticate_header(self, request: Request) -> str:
        return self.keyword
