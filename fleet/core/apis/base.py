"""What every REST endpoint shares (every view under /api/v1/ derives from ``ApiView``, checked by
tests/test_api_conventions.py): body-size refusal before parsing, JSON only, the schema (component
names and declared errors, fleet.core.apis.schema), the acting person, one way to paginate, and ETag
matching."""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.openapi import AutoSchema
from drf_spectacular.plumbing import ResolvedComponent, get_lib_doc_excludes
from rest_framework.pagination import BasePagination
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from fleet.core.apis.schema import (
    ERROR_COMPONENT,
    ERROR_SCHEMA,
    RETRY_AFTER_HEADER,
    component_name,
    error_response,
)
from fleet.core.audit import Actor
from fleet.core.pagination import Pagination
from fleet.core.parsers import JSONParser
from fleet.core.serializers import StrictFieldsMixin

BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


class BearerTokenScheme(OpenApiAuthenticationExtension):
    """Documents ``Authorization: Bearer <token>`` (agent, server and personal API tokens)."""

    target_class = "fleet.core.authentication.BearerTokenAuthentication"
    name = "bearerAuth"

    def get_security_definition(self, auto_schema: Any) -> dict[str, Any]:
        return {
            "type": "http",
            "scheme": "bearer",
            "description": "otba_ (agent), otbs_ (aggregation server) or otbu_ (personal API token)",
        }


class ApiSchema(AutoSchema):
    """Names every serializer component uniquely (``component_name``: a view's nested
    ``InputSerializer`` is ``<View>Input``) and declares, on every operation, the errors it can
    answer in the one error shape (fleet.core.apis.schema)."""

    def get_serializer_name(self, serializer: Any, direction: str) -> str:
        return component_name(type(serializer))

    def _map_basic_serializer(self, serializer: Any, direction: Any) -> dict[str, Any]:
        schema: dict[str, Any] = super()._map_basic_serializer(serializer, direction)
        if direction == "request" and isinstance(serializer, StrictFieldsMixin):
            schema["additionalProperties"] = False  # unknown keys are refused, naming them
        return schema

    def error_statuses(self) -> set[int]:
        """The error statuses every operation of this kind can answer; a view adds its own (409,
        429, ...) in its ``extend_schema(responses=...)``."""
        view: Any = self.view
        statuses = {400}  # validation; a NUL character in any query parameter (QueryStringMiddleware)
        open_to_all = all(isinstance(permission, AllowAny) for permission in view.get_permissions())
        if not open_to_all:
            statuses.add(403)
            if view.get_authenticators():
                statuses.add(401)
        if "{" in self.path:
            statuses.add(404)
        if self.method in BODY_METHODS and not view.streams_body:
            statuses.add(413)
            if self.get_request_serializer() is not None:
                statuses.add(415)
        return statuses

    def _get_response_bodies(self, direction: Any = "response") -> dict[str, Any]:
        responses: dict[str, Any] = super()._get_response_bodies(direction)
        self.registry.register_on_missing(
            ResolvedComponent(
                name=ERROR_COMPONENT,
                type=ResolvedComponent.SCHEMA,
                schema=ERROR_SCHEMA,
                object=ERROR_COMPONENT,
            )
        )
        for status in self.error_statuses():
            code = str(status)
            if code not in responses:
                responses[code] = self._get_response_for_code(
                    error_response(status), code, direction=direction
                )
        if "429" in responses:
            responses["429"].setdefault("headers", {}).update(RETRY_AFTER_HEADER)
        return dict(sorted(responses.items()))


def etag_matches(if_none_match: str, config_hash: str) -> bool:
    """True when an ``If-None-Match`` header names ``config_hash`` (strong or weak, any in a list)."""
    for candidate in if_none_match.split(","):
        tag = candidate.strip()
        if tag == "*":
            return True
        if tag.startswith("W/"):
            tag = tag[2:]
        if tag.strip('"') == config_hash:
            return True
    return False


class ApiView(APIView):
    """An APIView that refuses bodies over DATA_UPLOAD_MAX_MEMORY_SIZE with 413 before parsing
    (DRF streams the body to the parser without Django's size check) and accepts JSON only.

    A view with ``streams_body = True`` skips that check and must read ``request`` itself, in
    chunks (the agent's speed-test upload, under a cap of its own, see fleet/speedtest.py; a
    firmware image, which Django's multipart parser spools to a temporary file)."""

    parser_classes = [JSONParser]
    schema = ApiSchema()
    streams_body = False
    # How ``paginated()`` pages a list; a view whose list is a timeline sets a cursor pagination.
    pagination_class: type[BasePagination] = Pagination

    def initial(self, request: Request, *args: Any, **kwargs: Any) -> None:
        if request.method in BODY_METHODS and not self.streams_body:
            request._request.body  # noqa: B018  (raises RequestDataTooBig over the limit)
        super().initial(request, *args, **kwargs)

    @staticmethod
    def actor(request: Request) -> Actor:
        return Actor.from_request(request)

    def paginated(self, request: Request, queryset: QuerySet[Any], serializer_class: Any) -> Response:
        """The one way a view answers a list: a page of ``queryset`` serialised with
        ``serializer_class``, in the shape of the view's ``pagination_class``."""
        paginator = self.pagination_class()
        page: Any = paginator.paginate_queryset(queryset, request, view=self)
        return paginator.get_paginated_response(serializer_class(page, many=True).data)


def schema_doc_excludes() -> list[Any]:
    """drf-spectacular's GET_LIB_DOC_EXCLUDES: the classes whose docstring never describes an
    endpoint. ApiView's describes the base class, so an endpoint without a docstring of its own
    gets no description rather than that one."""
    return [*get_lib_doc_excludes(), ApiView]
