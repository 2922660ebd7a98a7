"""The OpenAPI schema's shared parts (drf-spectacular): the one error shape and the error responses
every operation declares, the rule that names serializer components, and the schema's server.

Every operation declares the errors it can answer, in the shape of ``fleet.core.api_errors``:

* 400 always (validation, and a NUL character in any query parameter is refused for every endpoint);
* 401 when the view authenticates callers, 403 when its permissions can refuse one (wrong kind of
  caller, role too low, CSRF);
* 404 when its path names an object;
* 413 for every method that carries a body (refused before parsing), 415 when it takes a JSON body;
* 409 and 429 where the view says so (``ERROR_CONFLICT``, ``ERROR_RATE_LIMITED`` in its
  ``extend_schema(responses=...)``), with ``Retry-After`` on 429.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from drf_spectacular.utils import OpenApiResponse

ERROR_COMPONENT = "Error"
ERROR_REF = {"$ref": f"#/components/schemas/{ERROR_COMPONENT}"}

# The body of every 4xx/5xx answer of the API (fleet.core.api_errors, QueryStringMiddleware, the
# JSON 404/500 handlers of /api/).
ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "Every API failure has this shape (docs/api.md, Errors).",
    "properties": {
        "error": {
            "type": "object",
            "properties": {
                "code": {
                    "type": "string",
                    "description": "machine-readable: invalid, not_found, conflict, rate_limited, ...",
                },
                "message": {"type": "string", "description": "for people; names the first bad field"},
                "fields": {
                    "type": "object",
                    "description": "the refused fields, each with its messages (`interfaces[2].name`)",
                    "additionalProperties": {"type": "array", "items": {"type": "string"}},
                },
            },
            "required": ["code", "message"],
        }
    },
    "required": ["error"],
}

ERROR_DESCRIPTIONS = {
    400: "Invalid input: the refused fields are named in `error.fields`",
    401: "No credential, or an invalid, expired or revoked one",
    403: "The caller may not do this (wrong kind of caller, or a role too low)",
    404: "No such object, or one of another organisation",
    409: "The request is valid but the current state forbids it",
    411: "A streamed body without a Content-Length",
    413: "The body is larger than the endpoint accepts",
    415: "The body is not JSON",
    416: "The range asked for is not in the file",
    429: "Too many attempts, or the resource is busy: retry after `Retry-After` seconds",
}

RETRY_AFTER_HEADER = {
    "Retry-After": {
        "schema": {"type": "integer", "minimum": 0},
        "description": "seconds to wait before trying again",
        "required": True,
    }
}


def error_response(status: int, description: str | None = None) -> OpenApiResponse:
    """An error response in the shared shape, for a view's ``extend_schema(responses={status: ...})``."""
    return OpenApiResponse(response=ERROR_REF, description=description or ERROR_DESCRIPTIONS[status])


ERROR_CONFLICT = error_response(409)
ERROR_RATE_LIMITED = error_response(429)


def component_name(serializer_class: type) -> str:
    """A serializer's component name, unique in the project: a serializer nested in a view is named
    after the view (``BoxReassignServerApi.InputSerializer`` -> ``BoxReassignServerInput``), so the
    many small ``InputSerializer`` classes never share one name; any other after its class. (Two
    classes still ending with one name are a collision warning, which fails ``spectacular
    --fail-on-warn``: tests/test_openapi_schema.py.)"""
    outer, _, inner = serializer_class.__qualname__.rpartition(".")
    owner = outer.rpartition(".")[2]
    if not owner or owner == "<locals>":
        return serializer_class.__name__
    return owner.removesuffix("Api") + inner


def servers_hook(result: dict[str, Any], generator: Any, request: Any, public: bool) -> dict[str, Any]:
    """POSTPROCESSING_HOOKS: the one server of the schema is the public address (OTB_PUBLIC_URL), so
    a client generated from it calls the service where people and boxes reach it."""
    result["servers"] = [{"url": settings.OTB_PUBLIC_URL}]
    return result
