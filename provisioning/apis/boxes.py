"""Box endpoints: what customers do (list and detail, rename and tag, WAN policy, unclaim,
transfer) and what staff do (reassign to another server, release addresses, revoke credentials,
decommission); the claim is ``otbcompat.apis`` (it may link an OverTheBox device). Each parses,
resolves the box (or organisation) the caller may see, calls one lifecycle or configuration service
(which decides whether the caller's role allows it) and answers with the box."""

from __future__ import annotations

import uuid
from typing import Any

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response

from fleet.core.access import box_for, box_visible
from fleet.core.apis.base import ApiView
from fleet.core.apis.schema import ERROR_CONFLICT
from fleet.core.audit import Actor
from fleet.core.choices import Role
from fleet.core.errors import NotFound
from fleet.core.models import Box
from fleet.core.permissions import IsPerson, IsStaff
from fleet.core.serializers import StrictCharField, StrictSerializer, StrictUUIDField, represent
from provisioning.models import AggregationServer
from provisioning.selectors.boxes import box_list, boxes_annotated
from provisioning.serializers import BoxOutputSerializer
from provisioning.services.configuration import box_set_port_forwards, box_set_wan_policy, box_update
from provisioning.services.lifecycle import (
    box_decommission,
    box_reassign_server,
    box_release_addresses,
    box_revoke_credentials,
    box_transfer,
    box_unclaim,
)

BOX_FILTER_PARAMETERS = [
    OpenApiParameter("organization", OpenApiTypes.UUID),
    OpenApiParameter("state", str, enum=["unclaimed", "claimed", "decommissioned"]),
    OpenApiParameter("server", OpenApiTypes.UUID),
    OpenApiParameter("region", str, description="region code or id"),
    OpenApiParameter("q", str, description="serial, name or MAC contains"),
    OpenApiParameter("drift", bool, description="desired config differs from the applied one"),
    OpenApiParameter("tag", str),
    OpenApiParameter("firmware", str),
]


def box_output(box: Box) -> dict[str, Any]:
    """The box serialised with its joins and public address. A box just provisioned carries them
    already (the provisioning service fills ``public_ipv4`` and the server's region from the
    placement); any other is re-read."""
    if not hasattr(box, "public_ipv4"):
        box = boxes_annotated(Box.objects.filter(pk=box.pk)).get()
    return represent(BoxOutputSerializer, box)


class BoxListApi(ApiView):
    permission_classes = [IsPerson]

    @extend_schema(parameters=BOX_FILTER_PARAMETERS, responses={200: BoxOutputSerializer(many=True)})
    def get(self, request: Request) -> Response:
        filters = {
            key: value for key, value in request.query_params.items() if key not in {"limit", "offset"}
        }
        queryset = box_list(user=request.user, auth=request.auth, filters=filters)
        return self.paginated(request, queryset, BoxOutputSerializer)


class BoxDetailApi(ApiView):
    permission_classes = [IsPerson]

    class InputSerializer(StrictSerializer):
        name = StrictCharField(required=False, allow_blank=True, max_length=100)
        tags = serializers.ListField(child=StrictCharField(max_length=40), required=False, max_length=20)

    @extend_schema(responses={200: BoxOutputSerializer})
    def get(self, request: Request, box_id: uuid.UUID) -> Response:
        box = box_for(request.user, box_id, Role.VIEWER, request.auth)
        return Response(box_output(box))

    @extend_schema(request=InputSerializer, responses={200: BoxOutputSerializer})
    def patch(self, request: Request, box_id: uuid.UUID) -> Response:
        actor = self.actor(request)
        box = box_visible(actor, box_id)
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        box = box_update(actor=actor, box=box, **data.validated_data)
        return Response(box_output(box))


class BoxWanPolicyApi(ApiView):
    permission_classes = [IsPerson]

    class InputSerializer(StrictSerializer):
        # Types and rules of the interfaces are checked by the service, which names the exact field
        # (``interfaces[2].name``); the admin and this endpoint share that one validation.
        mode = StrictCharField()
        interfaces = serializers.JSONField()
        download_kbps = serializers.JSONField(required=False, allow_null=True)
        upload_kbps = serializers.JSONField(required=False, allow_null=True)

    class OutputSerializer(serializers.Serializer):
        mode = serializers.CharField()
        interfaces = serializers.ListField(child=serializers.DictField())
        download_kbps = serializers.IntegerField(allow_null=True, help_text="the box's download limit")
        upload_kbps = serializers.IntegerField(allow_null=True, help_text="the box's upload limit")

    @extend_schema(responses={200: OutputSerializer})
    def get(self, request: Request, box_id: uuid.UUID) -> Response:
        box = box_for(request.user, box_id, Role.VIEWER, request.auth)
        return Response(self.OutputSerializer(box.wan_policy).data)

    @extend_schema(request=InputSerializer, responses={200: OutputSerializer})
    def put(self, request: Request, box_id: uuid.UUID) -> Response:
        actor = self.actor(request)
        box = box_visible(actor, box_id)
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        box = box_set_wan_policy(actor=actor, box=box, **data.validated_data)
        return Response(self.OutputSerializer(box.wan_policy).data)


class BoxPortForwardsApi(ApiView):
    """The box's port forwards: connections to its public IPv4 on a port, sent to a LAN address."""

    permission_classes = [IsPerson]

    class InputSerializer(StrictSerializer):
        # Checked by the service, which names the exact field (``port_forwards[1].to_address``).
        port_forwards = serializers.JSONField()

    class OutputSerializer(serializers.Serializer):
        port_forwards = serializers.ListField(child=serializers.DictField())

    @extend_schema(responses={200: OutputSerializer})
    def get(self, request: Request, box_id: uuid.UUID) -> Response:
        box = box_for(request.user, box_id, Role.VIEWER, request.auth)
        return Response({"port_forwards": box.port_forwards})

    @extend_schema(request=InputSerializer, responses={200: OutputSerializer})
    def put(self, request: Request, box_id: uuid.UUID) -> Response:
        actor = self.actor(request)
        box = box_visible(actor, box_id)
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        box = box_set_port_forwards(actor=actor, box=box, port_forwards=data.validated_data["port_forwards"])
        return Response({"port_forwards": box.port_forwards})


class BoxUnclaimApi(ApiView):
    permission_classes = [IsPerson]

    @extend_schema(request=None, responses={200: BoxOutputSerializer, 409: ERROR_CONFLICT})
    def post(self, request: Request, box_id: uuid.UUID) -> Response:
        actor = self.actor(request)
        box = box_unclaim(actor=actor, box=box_visible(actor, box_id))
        return Response(box_output(box))


class BoxTransferApi(ApiView):
    permission_classes = [IsPerson]

    class InputSerializer(StrictSerializer):
        organization = StrictUUIDField()

    @extend_schema(request=InputSerializer, responses={200: BoxOutputSerializer, 409: ERROR_CONFLICT})
    def post(self, request: Request, box_id: uuid.UUID) -> Response:
        actor = self.actor(request)
        box = box_visible(actor, box_id)
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        # The target goes by id: the service looks it up after authorising the source (owner first).
        box = box_transfer(actor=actor, box=box, organization=data.validated_data["organization"])
        return Response(box_output(box))


# --- staff box actions -------------------------------------------------------------------------------


class BoxProvisioningOutput(serializers.Serializer):
    id = serializers.UUIDField()
    serial = serializers.CharField()
    state = serializers.CharField()
    organization = serializers.UUIDField(source="organization_id", allow_null=True)
    server = serializers.UUIDField(source="server_id", allow_null=True)
    tunnel_port = serializers.IntegerField(allow_null=True)
    config_hash = serializers.CharField()


def _box_action(request: Request, box_id: uuid.UUID, action: Any, **kwargs: Any) -> Response:
    box = Box.objects.filter(pk=box_id).first()
    if box is None:
        raise NotFound("box not found")
    box = action(actor=Actor.from_request(request), box=box, **kwargs)
    return Response(BoxProvisioningOutput(Box.objects.get(pk=box.pk)).data)


class BoxReassignServerApi(ApiView):
    permission_classes = [IsStaff]

    class InputSerializer(StrictSerializer):
        server = serializers.PrimaryKeyRelatedField(
            queryset=AggregationServer.objects.all(), required=False, allow_null=True
        )

    @extend_schema(
        summary="Move a box to another aggregation server (the given one, or the best other one)",
        request=InputSerializer,
        responses={200: BoxProvisioningOutput, 409: ERROR_CONFLICT},
        tags=["boxes"],
    )
    def post(self, request: Request, box_id: uuid.UUID) -> Response:
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        return _box_action(request, box_id, box_reassign_server, server=data.validated_data.get("server"))


class BoxReleaseAddressesApi(ApiView):
    permission_classes = [IsStaff]

    @extend_schema(
        summary="Quarantine every address of a box",
        request=None,
        responses=BoxProvisioningOutput,
        tags=["boxes"],
    )
    def post(self, request: Request, box_id: uuid.UUID) -> Response:
        return _box_action(request, box_id, box_release_addresses)


class BoxRevokeCredentialsApi(ApiView):
    permission_classes = [IsStaff]

    class InputSerializer(StrictSerializer):
        include_agent = serializers.BooleanField(default=False)
        reissue = serializers.BooleanField(default=False)

    @extend_schema(
        summary="Revoke a box's tunnel credentials (optionally its agent credential; optionally reissue)",
        request=InputSerializer,
        responses=BoxProvisioningOutput,
        tags=["boxes"],
    )
    def post(self, request: Request, box_id: uuid.UUID) -> Response:
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        return _box_action(request, box_id, box_revoke_credentials, **data.validated_data)


class BoxDecommissionApi(ApiView):
    permission_classes = [IsStaff]

    @extend_schema(
        summary="Retire a box for good",
        request=None,
        responses={200: BoxProvisioningOutput, 409: ERROR_CONFLICT},
        tags=["boxes"],
    )
    def post(self, request: Request, box_id: uuid.UUID) -> Response:
        return _box_action(request, box_id, box_decommission)
