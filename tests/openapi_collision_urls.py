"""URLconf for tests/test_openapi_schema.py: two views whose nested input serializers end with one
component name (``ProbeInput``), the kind of collision that once made POST /regions/, /servers/ and
/pools/ declare the reassign-server body. Schema generation must refuse it."""

from __future__ import annotations

from typing import Any

from django.urls import path
from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response

from fleet.core.apis.base import ApiView


def region_probe() -> Any:
    class ProbeApi(ApiView):
        class InputSerializer(serializers.Serializer):
            code = serializers.CharField()

        @extend_schema(request=InputSerializer, responses={200: None})
        def post(self, request: Request) -> Response:
            return Response()

    return ProbeApi.as_view()


def reassign_probe() -> Any:
    class ProbeApi(ApiView):
        class InputSerializer(serializers.Serializer):
            server = serializers.UUIDField()

        @extend_schema(request=InputSerializer, responses={200: None})
        def post(self, request: Request, box_id: Any) -> Response:
            return Response()

    return ProbeApi.as_view()


urlpatterns = [
    path("api/v1/regions/", region_probe()),
    path("api/v1/boxes/<uuid:box_id>/reassign-server", reassign_probe()),
]
