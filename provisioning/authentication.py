"""Aggregation servers authenticate with their server token (``Authorization: Bearer otbs_...``),
resolved here for the one bearer scheme of ``fleet.core.authentication`` (``TOKEN_AUTHENTICATORS``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rest_framework.permissions import BasePermission

from fleet.core.authentication import MachinePrincipal
from fleet.core.tokens import digest
from provisioning.models import AggregationServer


@dataclass
class ServerPrincipal(MachinePrincipal):
    """An authenticated aggregation server."""

    server: AggregationServer = field(kw_only=True)

    def __str__(self) -> str:
        return f"server:{self.server.name}"


def server_principal_of_token(value: str) -> ServerPrincipal | None:
    """The server whose current token is ``value`` (an ``otbs_`` token), or None."""
    server = AggregationServer.objects.filter(token_hash=digest(value)).first()
    return ServerPrincipal(server=server) if server is not None else None


class IsAggregationServer(BasePermission):
    message = "a server token is required"

    def has_permission(self, request: Any, view: Any) -> bool:
        return isinstance(request.user, ServerPrincipal)
