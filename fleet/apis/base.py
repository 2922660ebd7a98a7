"""What every fleet endpoint shares: body-size refusal before parsing, the acting person, pagination."""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet
from rest_framework import parsers
from rest_framework.exceptions import ParseError
from rest_framework.pagination import LimitOffsetPagination
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from fleet.audit import Actor

BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


class JSONParser(parsers.JSONParser):
    """DRF's strict JSON parser, also refusing nesting too deep for Python's decoder (which raises
    RecursionError, not ValueError, and would otherwise end as a 500)."""

    def parse(self, stream: Any, media_type: str | None = None, parser_context: Any = None) -> Any:
        try:
            return super().parse(stream, media_type, parser_context)
        except RecursionError as exc:
            raise ParseError("JSON parse error - nested too deeply") from exc


class Pagination(LimitOffsetPagination):
    default_limit = 50
    max_limit = 500


class ApiView(APIView):
    """An APIView that refuses bodies over DATA_UPLOAD_MAX_MEMORY_SIZE with 413 before parsing
    (DRF streams the body to the parser without Django's size check) and accepts JSON only."""

    parser_classes = [JSONParser]

    def initial(self, request: Request, *args: Any, **kwargs: Any) -> None:
        if request.method in BODY_METHODS:
            request._request.body  # noqa: B018  (raises RequestDataTooBig over the limit)
        super().initial(request, *args, **kwargs)

    @staticmethod
    def actor(request: Request) -> Actor:
        return Actor.from_request(request)

    def paginated(self, request: Request, queryset: QuerySet[Any], serializer_class: Any) -> Response:
        paginator = Pagination()
        page = paginator.paginate_queryset(queryset, request, view=self)
        return paginator.get_paginated_response(serializer_class(page, many=True).data)
