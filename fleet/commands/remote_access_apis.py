"""REST edge for remote access to stock OverTheBox boxes: ask (admin), approve (owner), reject, close."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response

from fleet.commands.models import RemoteAccess
from fleet.commands.remote_access import (
    remote_access_approve,
    remote_access_close,
    remote_access_get_for_box,
    remote_access_list_for_box,
    remote_access_reject,
    remote_access_request,
    remote_accesses_open,
)
from fleet.core.access import box_for
from fleet.core.apis.base import ApiView
from fleet.core.choices import Role
from fleet.core.errors import InvalidInput
from fleet.core.permissions import IsPerson, IsStaff
from fleet.core.serializers import StrictSerializer


class RemoteAccessOutputSerializer(serializers.ModelSerializer):
    box = serializers.UUIDField(source="box_id")
    requested_by = serializers.SerializerMethodField()
    approved_by = serializers.SerializerMethodField()

    class Meta:
        model = RemoteAccess
        fields = [
            "id",
            "box",
            "state",
            "exposed_port",
            "public_key",
            "duration_s",
            "requested_by",
            "requested_at",
            "approved_by",
            "approved_at",
            "expires_at",
            "bastion_port",
            "device_public_key",
            "connected_at",
            "ended_at",
        ]

    def get_requested_by(self, access: RemoteAccess) -> str | None:
        return access.requested_by.get_username() if access.requested_by else None

    def get_approved_by(self, access: RemoteAccess) -> str | None:
        return access.approved_by.get_username() if access.approved_by else None


class BoxRemoteAccessListApi(ApiView):
    """A box's remote accesses, newest first (viewer and up); POST asks for one (admin and up), which
    then waits for an owner's approval."""

    permission_classes = [IsPerson]

    class InputSerializer(StrictSerializer):
        exposed_port = serializers.JSONField(help_text="the box's TCP port to reach (22: SSH)")
        public_key = serializers.JSONField(help_text="the OpenSSH public key let in on the box")
        duration_s = serializers.JSONField(required=False, help_text="seconds once approved (default 1 day)")

    @extend_schema(responses={200: RemoteAccessOutputSerializer(many=True)})
    def get(self, request: Request, box_id: Any) -> Response:
        box = box_for(request.user, box_id, Role.VIEWER, request.auth)
        return self.paginated(
            request, remote_access_list_for_box(box_id=box.pk), RemoteAccessOutputSerializer
        )

    @extend_schema(request=InputSerializer, responses={201: RemoteAccessOutputSerializer})
    def post(self, request: Request, box_id: Any) -> Response:
        box = box_for(request.user, box_id, Role.VIEWER, request.auth)
        if not isinstance(request.data, dict):
            raise InvalidInput("a JSON object is required", field="body")
        self.InputSerializer(data=request.data).is_valid(raise_exception=True)  # no unknown key
        access = remote_access_request(
            actor=self.actor(request),
            box=box,
            exposed_port=request.data.get("exposed_port"),
            public_key=request.data.get("public_key"),
            duration_s=request.data.get("duration_s"),
        )
        return Response(RemoteAccessOutputSerializer(access).data, status=201)


class BoxRemoteAccessDetailApi(ApiView):
    permission_classes = [IsPerson]

    @extend_schema(responses=RemoteAccessOutputSerializer)
    def get(self, request: Request, box_id: Any, remote_access_id: Any) -> Response:
        box = box_for(request.user, box_id, Role.VIEWER, request.auth)
        access = remote_access_get_for_box(box_id=box.pk, remote_access_id=remote_access_id)
        return Response(RemoteAccessOutputSerializer(access).data)


ACTIONS = {"approve": remote_access_approve, "reject": remote_access_reject, "close": remote_access_close}


class BoxRemoteAccessActionApi(ApiView):
    """``approve`` (an owner of the organisation only), ``reject`` or ``close`` (admin and up, or staff)."""

    permission_classes = [IsPerson]

    @extend_schema(
        request=None, responses=RemoteAccessOutputSerializer, operation_id="v1_boxes_remote_accesses_act"
    )
    def post(self, request: Request, box_id: Any, remote_access_id: Any, action: str) -> Response:
        box = box_for(request.user, box_id, Role.VIEWER, request.auth)
        access = remote_access_get_for_box(box_id=box.pk, remote_access_id=remote_access_id)
        if action not in ACTIONS:
            raise InvalidInput("approve, reject or close", field="action")
        access = ACTIONS[action](actor=self.actor(request), access=access)
        return Response(RemoteAccessOutputSerializer(access).data)


class OpenRemoteAccessListApi(ApiView):
    """Every open remote access session (staff only): what the bastion admits. For each: the box's
    host key (``device_public_key``: the key its ``limited-user`` login must accept on
    ``bastion_port``), the key let into the box (``public_key``) and ``expires_at``."""

    permission_classes = [IsStaff]

    @extend_schema(responses={200: RemoteAccessOutputSerializer(many=True)})
    def get(self, request: Request) -> Response:
        return self.paginated(
            request, remote_accesses_open(actor=self.actor(request)), RemoteAccessOutputSerializer
        )
