"""REST edge for box commands: parse, call one service or selector, serialise. Also the agent's
speed-test payload endpoint, the data path of the ``speed_test`` command."""

from __future__ import annotations

from typing import Any, cast

from django.http import StreamingHttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_field
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response

from fleet.commands.choices import CommandKind, CommandState
from fleet.commands.models import Command
from fleet.commands.selectors import command_get_for_user, command_list_for_box
from fleet.commands.services import command_cancel, command_create
from fleet.commands.speedtest import (
    SpeedtestPayload,
    speedtest_download_size,
    speedtest_receive,
    speedtest_slot_acquire,
    speedtest_upload_size,
)
from fleet.core.access import box_for
from fleet.core.apis.base import ApiView
from fleet.core.apis.schema import ERROR_CONFLICT, ERROR_RATE_LIMITED, error_response
from fleet.core.authentication import AgentPrincipal, BearerTokenAuthentication
from fleet.core.choices import Role
from fleet.core.permissions import IsAgent, IsPerson
from fleet.core.serializers import QuerySerializer, StrictSerializer


class CommandOutputSerializer(serializers.ModelSerializer):
    box = serializers.UUIDField(source="box_id")
    organization = serializers.UUIDField(source="organization_id")
    created_by = serializers.SerializerMethodField()

    class Meta:
        model = Command
        fields = [
            "id",
            "box",
            "organization",
            "kind",
            "params",
            "state",
            "progress",
            "progress_message",
            "result",
            "error",
            "created_by",
            "created_at",
            "sent_at",
            "started_at",
            "finished_at",
            "expires_at",
            "delivery_count",
        ]

    @extend_schema_field(serializers.CharField(allow_null=True))
    def get_created_by(self, command: Command) -> str | None:
        return command.created_by.get_username() if command.created_by else None


class BoxCommandListApi(ApiView):
    permission_classes = [IsPerson]

    class FilterSerializer(QuerySerializer):
        state = serializers.ChoiceField(choices=CommandState.choices, required=False)
        kind = serializers.ChoiceField(choices=CommandKind.choices, required=False)

    class InputSerializer(StrictSerializer):
        kind = serializers.ChoiceField(choices=CommandKind.choices)
        params = serializers.JSONField(required=False, default=dict)
        ttl_s = serializers.IntegerField(required=False, allow_null=True, default=None)

    @extend_schema(
        summary="A box's commands",
        parameters=[FilterSerializer],
        responses={200: CommandOutputSerializer(many=True)},
        tags=["commands"],
    )
    def get(self, request: Request, box_id: Any) -> Response:
        box = box_for(request.user, box_id, Role.VIEWER, request.auth)
        filters = self.FilterSerializer(data=request.query_params)
        filters.is_valid(raise_exception=True)
        return self.paginated(
            request,
            command_list_for_box(box_id=box.pk, filters=filters.validated_data),
            CommandOutputSerializer,
        )

    @extend_schema(
        summary="Send a command to a box",
        request=InputSerializer,
        responses={201: CommandOutputSerializer, 409: ERROR_CONFLICT},
        tags=["commands"],
    )
    def post(self, request: Request, box_id: Any) -> Response:
        box = box_for(request.user, box_id, Role.VIEWER, request.auth)
        payload = self.InputSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        command = command_create(actor=self.actor(request), box=box, **payload.validated_data)
        return Response(CommandOutputSerializer(command).data, status=201)


class CommandDetailApi(ApiView):
    permission_classes = [IsPerson]

    @extend_schema(summary="A command", responses={200: CommandOutputSerializer}, tags=["commands"])
    def get(self, request: Request, command_id: Any) -> Response:
        command = command_get_for_user(user=request.user, command_id=command_id, auth=request.auth)
        return Response(CommandOutputSerializer(command).data)


class CommandCancelApi(ApiView):
    permission_classes = [IsPerson]

    @extend_schema(
        summary="Cancel a command the box has not started",
        request=None,
        responses={200: CommandOutputSerializer, 409: ERROR_CONFLICT},
        tags=["commands"],
    )
    def post(self, request: Request, command_id: Any) -> Response:
        command = command_get_for_user(user=request.user, command_id=command_id, auth=request.auth)
        command = command_cancel(actor=self.actor(request), command=command)
        return Response(CommandOutputSerializer(command).data)


class AgentSpeedtestApi(ApiView):
    """The speed test: GET downloads zero bytes, POST uploads a body that is counted and discarded
    (read in chunks, never buffered: ``streams_body``). One test per box at a time."""

    authentication_classes = [BearerTokenAuthentication]
    permission_classes = [IsAgent]
    streams_body = True

    class OutputSerializer(serializers.Serializer):
        bytes = serializers.IntegerField(help_text="bytes of the body the server received")
        duration_s = serializers.FloatField(help_text="seconds from its first byte to its last")

    @extend_schema(
        description=(
            "Download that many zero bytes (Content-Length set)."
            " 429 with Retry-After while another test of the box runs."
        ),
        parameters=[
            OpenApiParameter("bytes", int, description="payload size, at most 100 MB (default 10 MB)")
        ],
        responses={(200, "application/octet-stream"): OpenApiTypes.BINARY, 429: ERROR_RATE_LIMITED},
        tags=["agent"],
    )
    def get(self, request: Request) -> StreamingHttpResponse:
        size = speedtest_download_size(request.query_params.get("bytes"))
        slot = speedtest_slot_acquire(box_id=cast(AgentPrincipal, request.user).box.pk)
        response = StreamingHttpResponse(
            SpeedtestPayload(size, slot), content_type="application/octet-stream"
        )
        response["Content-Length"] = str(size)
        response["Cache-Control"] = "no-store"
        return response

    @extend_schema(
        description=(
            "Upload any body of up to 100 MB with a Content-Length (411 without one, 413 over the cap);"
            " it is counted and discarded. 429 with Retry-After while another test of the box runs."
        ),
        request={"application/octet-stream": OpenApiTypes.BINARY},
        responses={
            200: OutputSerializer,
            411: error_response(411),
            413: error_response(413, "The declared body is over 100 MB"),
            429: ERROR_RATE_LIMITED,
        },
        tags=["agent"],
    )
    def post(self, request: Request) -> Response:
        size = speedtest_upload_size(request.META.get("CONTENT_LENGTH"))
        slot = speedtest_slot_acquire(box_id=cast(AgentPrincipal, request.user).box.pk)
        try:
            result = speedtest_receive(stream=request._request, size=size, slot=slot)
        finally:
            slot.release()
        return Response(self.OutputSerializer(result).data, headers={"Cache-Control": "no-store"})
