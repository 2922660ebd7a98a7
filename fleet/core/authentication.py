"""Bearer-token authentication of the API callers that are not a browser session: on-box agents,
people's personal API tokens, and the kinds of token another app resolves (aggregation servers:
``provisioning.authentication``, wired through ``settings.TOKEN_AUTHENTICATORS``).

The principal for an agent is a small object, not a Django user, so that permission classes and
selectors can tell callers apart and a box token can never act as a person; a machine principal
(agent or server) says so with ``is_machine``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, cast

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import connections, router
from django.db.models import Model
from django.utils import timezone
from django.utils.module_loading import import_string
from rest_framework import authentication, exceptions
from rest_framework.request import Request

from fleet.core.credentials import live_agent_credentials
from fleet.core.models import ApiToken, Box, Membership, Organization
from fleet.core.tokens import TokenKind, digest, token_kind


@dataclass
class MachinePrincipal:
    """A caller that is a machine, never a person (``is_machine``): permission classes and selectors
    tell it apart from users, and it can never act as one."""

    is_authenticated: bool = field(default=True, init=False)
    is_active: bool = field(default=True, init=False)
    is_staff: bool = field(default=False, init=False)
    is_superuser: bool = field(default=False, init=False)
    is_machine: bool = field(default=True, init=False)
    pk: None = field(default=None, init=False)


@dataclass
class AgentPrincipal(MachinePrincipal):
    """An authenticated on-box agent."""

    box: Box = field(kw_only=True)
    credential_id: Any = field(kw_only=True)

    def __str__(self) -> str:
        return f"box:{self.box.serial}"


def bearer_token(header: str | None) -> str | None:
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer":
        return None
    value = value.strip()
    return value or None


def agent_from_token(value: str) -> AgentPrincipal | None:
    """The live agent credential for a token, with its box, in one query; None if unknown/revoked."""
    credential = live_agent_credentials().filter(token_hash=digest(value)).select_related("box").first()
    if credential is None:
        return None
    return AgentPrincipal(box=credential.box, credential_id=credential.id)


@functools.cache
def _user_token_query() -> tuple[str, list[tuple[type[Model], list[str]]]]:
    """The SQL reading a personal API token with its user, its organisation and the user's role
    there, and the (model, field names) of its columns. Built once: compiling the same query with
    the ORM (``select_related`` plus a role subquery) cost ~2 ms of CPU on every API request."""
    selected: list[str] = []
    layout: list[tuple[type[Model], list[str]]] = []
    for alias, model in (("t", ApiToken), ("u", get_user_model()), ("o", Organization)):
        fields = model._meta.concrete_fields
        selected += [f'{alias}."{field.column}"' for field in fields]
        layout.append((model, [field.attname for field in fields]))
    user_table = get_user_model()._meta.db_table
    # Identifiers from the models' metadata, never from input: the one parameter is the digest.
    sql = (
        f"SELECT {', '.join(selected)}, (SELECT m.role FROM {Membership._meta.db_table} m"  # noqa: S608
        " WHERE m.user_id = t.user_id AND m.organization_id = t.organization_id LIMIT 1)"
        f" FROM {ApiToken._meta.db_table} t JOIN {user_table} u ON u.id = t.user_id"
        f" JOIN {Organization._meta.db_table} o ON o.id = t.organization_id"
        " WHERE t.token_hash = %s AND t.revoked_at IS NULL LIMIT 1"
    )
    return sql, layout


def _live_user_token(value: str) -> ApiToken | None:
    """The unrevoked personal API token of ``value`` with ``user`` and ``organization`` loaded and
    ``member_role`` (the user's role in that organisation, None if none; ``fleet.core.access`` reads it
    instead of querying the membership again), in one query; None if unknown or revoked."""
    sql, layout = _user_token_query()
    with connections[router.db_for_read(ApiToken)].cursor() as cursor:
        cursor.execute(sql, [digest(value)])
        row = cursor.fetchone()
    if row is None:
        return None
    loaded: list[Any] = []
    offset = 0
    for model, names in layout:
        loaded.append(model.from_db(router.db_for_read(model), names, row[offset : offset + len(names)]))
        offset += len(names)
    token, user, organization = loaded
    token.user = user
    token.organization = organization
    token.member_role = row[-1]
    return cast(ApiToken, token)


@functools.cache
def _other_token_authenticators() -> dict[str, Callable[[str], Any]]:
    """Token kind -> the function resolving such a token to its principal, for the kinds another app
    owns (``settings.TOKEN_AUTHENTICATORS``: the aggregation servers' tokens are provisioning's).
    Composed from settings, as Django composes its authentication backends, so that the one bearer
    scheme serves every kind of token without this module importing the apps above it."""
    return {kind: import_string(path) for kind, path in settings.TOKEN_AUTHENTICATORS.items()}


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
        if kind == TokenKind.USER:
            return self._user_token(value)
        owner = kind.name.lower() if kind is not None else ""
        authenticator = _other_token_authenticators().get(owner)
        if authenticator is None:
            raise exceptions.AuthenticationFailed("invalid token")
        principal = authenticator(value)
        if principal is None:
            raise exceptions.AuthenticationFailed(f"invalid or revoked {owner} token")
        return principal, None

    def _user_token(self, value: str) -> tuple[Any, ApiToken]:
        now = timezone.now()
        token = _live_user_token(value)
        if token is None or token.expires_at <= now or not token.user.is_active:
            raise exceptions.AuthenticationFailed("invalid, expired or revoked API token")
        if token.last_used_at is None or now - token.last_used_at > timedelta(minutes=5):
            ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
        return token.user, token

    def authenticate_header(self, request: Request) -> str:
        return self.keyword
