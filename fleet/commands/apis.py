"""REST edge for box commands: parse, call one service or selector, serialise."""

from __future__ import annotations

from typing import Any

from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response

from fleet.access import box_for
from fleet.apis.base import ApiView
from fleet.choices import Role
from fleet.commands.choices import CommandKind, CommandState
from fleet.commands.models import Command
from fleet.commands.selectors import command_get_for_user, command_list_for_box
from fleet.commands.services import command_cancel, command_create
from fleet.permissions import IsPerson


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

    def get_created_by(self, command: Command) -> str | None:
        return command.created_by.get_username() if command.created_by else None


class BoxCommandListApi(ApiView):
    permission_classes = [IsPerson]

    class FilterSerializer(serializers.Serializer):
        state = serializers.ChoiceField(choices=CommandState.choices, required=False)
        kind = serializers.ChoiceField(choices=CommandKind.choices, required=False)

    class InputSerializer(serializers.Serializer):
        kind = serializers.ChoiceField(choices=CommandKind.choices)
        params = serializers.JSONField(required=False, default=dict)
        ttl_s = serializers.IntegerField(required=False, allow_null=True, default=None)

    def get(self, request: Request, box_id: Any) -> Response:
        box = box_for(request.user, box_id, Role.VIEWER, request.auth)
        filters = self.FilterSerializer(data=request.query_params)
        filters.is_valid(raise_exception=True)
        return self.paginated(
            request,
            command_list_for_box(box_id=box.pk, filters=filters.validated_data),
            CommandOutputSerializer,
        )

    def post(self, request: Request, box_id: Any) -> Response:
        box = box_for(request.user, box_id, Role.VIEWER, request.auth)
        payload = self.InputSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        command = command_create(actor=self.actor(request), box=box, **payload.validated_data)
        return Response(CommandOutputSerializer(command).data, status=201)


class CommandDetailApi(ApiView):
    permission_classes = [IsPerson]

    def get(self, request: Request, command_id: Any) -> Response:
        command = command_get_for_user(user=request.user, command_id=command_id, auth=request.auth)
        return Response(CommandOutputSerializer(command).data)


class CommandCancelApi(ApiView):
    permission_classes = [IsPerson]

    def post(self, request: Request, command_id: Any) -> Response:
        command = command_get_for_user(user=request.user, command_id=command_id, auth=request.auth)
        command = command_cancel(actor=self.actor(request), command=command)
        return Response(CommandOutputSerializer(command).data)
