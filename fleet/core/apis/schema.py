"""The OpenAPI schema's shared parts (drf-spectacular): its server, read when it is generated."""

from __future__ import annotations

from typing import Any

from django.conf import settings


def servers_hook(result: dict[str, Any], generator: Any, request: Any, public: bool) -> dict[str, Any]:
    """POSTPROCESSING_HOOKS: the one server of the schema is the public address (OTB_PUBLIC_URL), so
    a client generated from it calls the service where people and boxes reach it."""
    result["servers"] = [{"url": settings.OTB_PUBLIC_URL}]
    return result
