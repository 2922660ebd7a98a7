"""Endpoints of the on-box agent about its identity and configuration: enroll, fetch the desired
configuration (ETag), report it applied. (The speed-test payload endpoint is ``fleet.commands``.)"""

from __future__ import annotations

from typing import Any, cast

from django.http import HttpResponseNotModified
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers, status
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response

from fleet.core.apis.base import ApiView, etag_matches
from fleet.core.apis.schema import ERROR_CONFLICT, ERROR_RATE_LIMITED, error_response
from fleet.core.authentication import AgentPrincipal, BearerTokenAuthentication
from fleet.core.permissions import IsAgent
from fleet.core.serializers import SerialField, StrictCharField, StrictSerializer
from provisioning.selectors.configuration import box_config_document
from provisioning.services.configuration import box_config_applied, box_config_refresh
from provisioning.services.enrollment import box_enroll


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

    @extend_schema(
        request=InputSerializer,
        responses={
            201: OutputSerializer,
            401: error_response(
                401, "Unknown serial, wrong factory secret or enrollment token (enroll_failed)"
            ),
            403: error_response(403, "The serial is another owner's, or decommissioned"),
            409: ERROR_CONFLICT,
            429: ERROR_RATE_LIMITED,
        },
        auth=[],
    )
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
        document = box_config_document(box=box)
        if box.config_hash != document["config_hash"]:
            # Never stored, or stored by a release whose document had another shape: store it now so
            # the fast path answers 304 and the box does not look drifting.
            box_config_refresh(box=box)
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
        applied_config_hash = serializers.CharField(help_text="the last configuration applied successfully")
        config_hash = serializers.CharField(help_text="the desired configuration")
        drift = serializers.BooleanField(source="config_drift")
        apply_error = serializers.CharField(help_text="why the last apply failed; empty after a success")

    @extend_schema(request=InputSerializer, responses={200: OutputSerializer})
    def post(self, request: Request) -> Response:
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        box = box_config_applied(box=cast(AgentPrincipal, request.user).box, **data.validated_data)
        return Response(self.OutputSerializer(box).data)
