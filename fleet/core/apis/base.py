"""What every REST endpoint shares (every view under /api/v1/ derives from ``ApiView``, checked by
tests/test_api_conventions.py): body-size refusal before parsing, JSON only, the schema names, the
acting person, one way to paginate, and ETag matching."""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.openapi import AutoSchema
from drf_spectacular.plumbing import get_lib_doc_excludes
from rest_framework.pagination import BasePagination
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from fleet.core.audit import Actor
from fleet.core.pagination import Pagination
from fleet.core.parsers import JSONParser

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
    """Names nested ``InputSerializer``/``OutputSerializer`` components after their view
    (``BoxClaimInput``), so the many small serializers of the same name do not collide."""

    NESTED = {"InputSerializer": "Input", "OutputSerializer": "Output", "CreatedSerializer": "Created"}

    def get_serializer_name(self, serializer: Any, direction: str) -> str:
        name = super().get_serializer_name(serializer, direction)  # type: ignore[arg-type]
        suffix = self.NESTED.get(type(serializer).__name__)
        if suffix is None:
            return name
        return type(self.view).__name__.removesuffix("Api") + suffix


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
