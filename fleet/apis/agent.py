"""Endpoints of the on-box agent: enroll, fetch the configuration (ETag), report it applied,
download a speed-test payload."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, cast

from django.http import HttpResponseNotModified, StreamingHttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers, status
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response

from fleet.apis.base import ApiView
from fleet.authentication import AgentPrincipal, BearerTokenAuthentication
from fleet.errors import InvalidInput
from fleet.permissions import IsAgent
from fleet.serializers import SerialField, StrictCharField, StrictSerializer
from fleet.services import box_config_applied, box_enroll

SPEEDTEST_MAX_BYTES = 100 * 1024 * 1024
SPEEDTEST_DEFAULT_BYTES = 10 * 1024 * 1024
SPEEDTEST_CHUNK = 1024 * 1024
_ZEROS = bytes(SPEEDTEST_CHUNK)


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


class AgentEnrollApi(ApiView):
    """Anonymous by design: the factory secret or enrollment token in the body is the credential."""

    authentication_classes: list[Any] = []
    permission_classes = [AllowAny]

    class InputSerializer(StrictSerializer):
        serial = SerialField()
        factory_secret = StrictCharField(required=False, max_length=128, trim_whitespace=False)
        enrollment_token = StrictCharField(required=False, max_length=200, trim_whitespace=False)
        wg_public_key = StrictCharField(required=False, allow_blank=True, max_length=64)
        model = StrictCharField(required=False, allow_blank=True, max_length=64)
        mac = StrictCharField(required=False, allow_blank=True, max_length=32)
        agent_version = StrictCharField(required=False, allow_blank=True, max_length=64)

    class OutputSerializer(serializers.Serializer):
        box_id = serializers.UUIDField()
        agent_token = serializers.CharField()
        serial = serializers.CharField()

    @extend_schema(request=InputSerializer, responses={201: OutputSerializer}, auth=[])
    def post(self, request: Request) -> Response:
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        box, token = box_enroll(**data.validated_data, source_ip=request.META.get("REMOTE_ADDR"))
        body = {"box_id": box.pk, "agent_token": token, "serial": box.serial}
        return Response(self.OutputSerializer(body).data, status=status.HTTP_201_CREATED)


class AgentConfigApi(ApiView):
    """The desired configuration. The 304 path is the fleet's hot path: authentication has loaded the
    box with its credential (one query), and the stored hash is compared before anything is built."""

    authentication_classes = [BearerTokenAuthentication]
    permission_classes = [IsAgent]

    @extend_schema(
        parameters=[OpenApiParameter("If-None-Match", OpenApiTypes.STR, OpenApiParameter.HEADER)],
        responses={200: OpenApiTypes.OBJECT, 304: None},
    )
    def get(self, request: Request) -> Any:
        box = cast(AgentPrincipal, request.user).box
        if_none_match = request.headers.get("If-None-Match")
        if box.config_hash and if_none_match and etag_matches(if_none_match, box.config_hash):
            response = HttpResponseNotModified()
            response["ETag"] = f'"{box.config_hash}"'
            return response
        from provisioning.selectors import box_config_document

        if not box.config_hash:
            from provisioning.services import box_config_refresh

            box_config_refresh(box=box)
        document = box_config_document(box=box)
        if if_none_match and etag_matches(if_none_match, document["config_hash"]):
            response = HttpResponseNotModified()
            response["ETag"] = f'"{document["config_hash"]}"'
            return response
        return Response(
            document, headers={"ETag": f'"{document["config_hash"]}"', "Cache-Control": "no-cache"}
        )


class AgentConfigAppliedApi(ApiView):
    authentication_classes = [BearerTokenAuthentication]
    permission_classes = [IsAgent]

    class InputSerializer(StrictSerializer):
        config_hash = StrictCharField(max_length=64)
        error = StrictCharField(required=False, allow_null=True, allow_blank=True, trim_whitespace=False)

    class OutputSerializer(serializers.Serializer):
        applied_config_hash = serializers.CharField()
        config_hash = serializers.CharField()
        drift = serializers.BooleanField(source="config_drift")

    @extend_schema(request=InputSerializer, responses={200: OutputSerializer})
    def post(self, request: Request) -> Response:
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        box = box_config_applied(box=cast(AgentPrincipal, request.user).box, **data.validated_data)
        return Response(self.OutputSerializer(box).data)


def _zeros(total: int) -> Iterator[bytes]:
    remaining = total
    while remaining > 0:
        chunk = min(remaining, SPEEDTEST_CHUNK)
        yield _ZEROS if chunk == SPEEDTEST_CHUNK else bytes(chunk)
        remaining -= chunk


class AgentSpeedtestApi(ApiView):
    authentication_classes = [BearerTokenAuthentication]
    permission_classes = [IsAgent]

    @extend_schema(
        parameters=[
            OpenApiParameter("bytes", int, description="payload size, at most 100 MB (default 10 MB)")
        ],
        responses={(200, "application/octet-stream"): OpenApiTypes.BINARY},
    )
    def get(self, request: Request) -> StreamingHttpResponse:
        raw = request.query_params.get("bytes")
        size = SPEEDTEST_DEFAULT_BYTES
        if raw is not None:
            if not raw.isascii() or not raw.isdigit() or int(raw) > SPEEDTEST_MAX_BYTES:
                raise InvalidInput(
                    f"bytes must be a whole number from 0 to {SPEEDTEST_MAX_BYTES}", field="bytes"
                )
            size = int(raw)
        response = StreamingHttpResponse(_zeros(size), content_type="application/octet-stream")
        response["Content-Length"] = str(size)
        response["Cache-Control"] = "no-store"
        return response


__all__ = [
    "AgentConfigApi",
    "AgentConfigAppliedApi",
    "AgentEnrollApi",
    "AgentSpeedtestApi",
    "etag_matches",
]
