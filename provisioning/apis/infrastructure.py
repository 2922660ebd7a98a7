"""REST edges of the infrastructure: the server peers endpoint and the staff-only management of
regions, aggregation servers and address pools.

Each view parses with a nested input serializer, calls one service or selector, and serialises.
"""

from __future__ import annotations

from typing import Any, cast
from uuid import UUID

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_field, inline_serializer
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response

from fleet.core.apis.base import ApiView, etag_matches
from fleet.core.errors import NotFound
from fleet.core.models import Region
from fleet.core.permissions import IsStaff
from fleet.core.serializers import (
    StrictCharField,
    StrictFloatField,
    StrictIntegerField,
    StrictSerializer,
    StrictUUIDField,
)
from provisioning.authentication import IsAggregationServer, ServerPrincipal
from provisioning.choices import PoolPurpose, ServerStatus
from provisioning.models import AddressPool, AggregationServer
from provisioning.selectors.configuration import server_peers_document
from provisioning.selectors.infrastructure import (
    pool_utilisation,
    pools_with_utilisation,
    region_list,
    servers_with_spare,
)
from provisioning.services import infrastructure as services
from provisioning.services.gateway import server_report_record


def _get(model: Any, pk: Any, what: str, queryset: Any = None) -> Any:
    try:
        return (queryset if queryset is not None else model.objects).get(pk=UUID(str(pk)))
    except (model.DoesNotExist, ValueError) as exc:
        raise NotFound(f"{what} not found") from exc


# --- peers ------------------------------------------------------------------------------------------


class ServerPeersApi(ApiView):
    """The boxes an aggregation server terminates, for its own tunnel configuration."""

    permission_classes = [IsAggregationServer]

    @extend_schema(
        summary="Peers of the calling aggregation server",
        description=(
            "Every claimed box on the server with its tunnel port, addresses and decrypted tunnel "
            "secrets. Send the previous ETag in If-None-Match to get 304 when nothing changed."
        ),
        parameters=[OpenApiParameter("If-None-Match", str, OpenApiParameter.HEADER, required=False)],
        responses={
            200: inline_serializer(
                "ServerPeers",
                {
                    "server": serializers.CharField(),
                    "etag": serializers.CharField(),
                    "count": serializers.IntegerField(),
                    "peers": serializers.ListField(child=serializers.DictField()),
                },
            ),
            304: None,
        },
        tags=["servers"],
    )
    def get(self, request: Request) -> Response:
        server = cast(ServerPrincipal, request.user).server
        peers, etag = server_peers_document(server=server)
        headers = {"ETag": f'"{etag}"', "Cache-Control": "no-store"}
        if etag_matches(request.headers.get("If-None-Match", ""), etag):
            return Response(status=status.HTTP_304_NOT_MODIFIED, headers=headers)
        body = {"server": server.name, "etag": etag, "count": len(peers), "peers": peers}
        return Response(body, headers=headers)


REPORT_MAX_BOXES = 10_000
BYTES_MAX = 2**63 - 1


class ReportBoxInput(StrictSerializer):
    box_id = StrictUUIDField()
    rx_bytes = StrictIntegerField(min_value=0, max_value=BYTES_MAX, help_text="received from the box")
    tx_bytes = StrictIntegerField(min_value=0, max_value=BYTES_MAX, help_text="sent to the box")
    connections = StrictIntegerField(min_value=0, max_value=10_000_000)
    handshake_age_s = StrictIntegerField(min_value=0, max_value=2**31 - 1, allow_null=True)


class ReportUpstreamInput(StrictSerializer):
    name = StrictCharField(max_length=15)
    rx_bytes = StrictIntegerField(min_value=0, max_value=BYTES_MAX)
    tx_bytes = StrictIntegerField(min_value=0, max_value=BYTES_MAX)


class ServerReportApi(ApiView):
    """What the calling server's gateway (otb-gateway) reports every 10 s: its health and, per box,
    the tunnel as it sees it. The body is bounded (OTB_MAX_BODY_BYTES, 1 MiB by default, and at most
    REPORT_MAX_BOXES boxes) and checked strictly: a wrong field is named and nothing is stored."""

    permission_classes = [IsAggregationServer]

    class InputSerializer(StrictSerializer):
        gateway_version = StrictCharField(max_length=64)
        uptime_s = StrictIntegerField(min_value=0, max_value=BYTES_MAX)
        load1 = StrictFloatField(min_value=0, max_value=100_000, allow_null=True)
        cpu_pct = StrictFloatField(min_value=0, max_value=100, allow_null=True)
        mem_pct = StrictFloatField(min_value=0, max_value=100, allow_null=True)
        wg_public_key = StrictCharField(max_length=64, allow_blank=True)
        peers = StrictIntegerField(min_value=0, max_value=65535)
        converge_errors = StrictIntegerField(min_value=0, max_value=1_000_000)
        last_error = StrictCharField(max_length=1000, allow_blank=True, required=False, trim_whitespace=False)
        upstream = ReportUpstreamInput(required=False, allow_null=True)
        # Left out by a gateway that has no peers document yet: the boxes' rows are then kept.
        boxes: serializers.ListSerializer = serializers.ListSerializer(
            child=ReportBoxInput(), max_length=REPORT_MAX_BOXES, required=False
        )

    class OutputSerializer(serializers.Serializer):
        boxes = serializers.IntegerField(help_text="tunnel rows stored")
        ignored = serializers.IntegerField(help_text="boxes listed that are not on this server")
        wg_public_key_updated = serializers.BooleanField()

    @extend_schema(
        summary="Report of the calling server's gateway",
        request=InputSerializer,
        responses={200: OutputSerializer},
        tags=["servers"],
    )
    def post(self, request: Request) -> Response:
        server = cast(ServerPrincipal, request.user).server
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        outcome = server_report_record(server=server, report=data.validated_data)
        return Response(self.OutputSerializer(outcome).data)


# --- regions ----------------------------------------------------------------------------------------


class RegionOutput(serializers.ModelSerializer):
    class Meta:
        model = Region
        fields = ["id", "code", "name"]


class RegionListApi(ApiView):
    permission_classes = [IsStaff]

    class InputSerializer(StrictSerializer):
        code = serializers.SlugField(max_length=32)
        name = serializers.CharField(max_length=100)

    @extend_schema(summary="List regions", responses=RegionOutput(many=True), tags=["servers"])
    def get(self, request: Request) -> Response:
        return self.paginated(request, region_list(), RegionOutput)

    @extend_schema(
        summary="Create a region", request=InputSerializer, responses={201: RegionOutput}, tags=["servers"]
    )
    def post(self, request: Request) -> Response:
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        region = services.region_create(actor=self.actor(request), **data.validated_data)
        return Response(RegionOutput(region).data, status=status.HTTP_201_CREATED)


# --- servers ----------------------------------------------------------------------------------------


class ServerOutput(serializers.ModelSerializer):
    region_code = serializers.CharField(source="region.code", read_only=True)
    spare = serializers.SerializerMethodField()

    class Meta:
        model = AggregationServer
        fields = [
            "id",
            "name",
            "region",
            "region_code",
            "hostname",
            "public_ipv4",
            "public_ipv6",
            "tunnel_port_min",
            "tunnel_port_max",
            "capacity",
            "assigned_boxes",
            "spare",
            "status",
            "wg_public_key",
            "token_prefix",
            "created_at",
            "updated_at",
        ]

    @extend_schema_field(OpenApiTypes.INT)
    def get_spare(self, server: AggregationServer) -> int:
        return server.capacity - server.assigned_boxes


class ServerCreatedOutput(ServerOutput):
    token = serializers.CharField(help_text="The server's API token; shown only in this response.")

    class Meta(ServerOutput.Meta):
        fields = [*ServerOutput.Meta.fields, "token"]


class ServerListApi(ApiView):
    permission_classes = [IsStaff]

    class InputSerializer(StrictSerializer):
        name = serializers.CharField(max_length=100)
        region = serializers.PrimaryKeyRelatedField(queryset=Region.objects.all())
        hostname = serializers.CharField(max_length=253)
        public_ipv4 = serializers.IPAddressField(protocol="IPv4")
        public_ipv6 = serializers.IPAddressField(protocol="IPv6", required=False, allow_null=True)
        tunnel_port_min = serializers.IntegerField(min_value=1, max_value=65535, default=51820)
        tunnel_port_max = serializers.IntegerField(min_value=1, max_value=65535, default=52819)
        capacity = serializers.IntegerField(min_value=0, max_value=65535)
        wg_public_key = serializers.CharField(max_length=64, allow_blank=True, default="")
        status = serializers.ChoiceField(choices=ServerStatus.choices, default=ServerStatus.ACTIVE)

    @extend_schema(summary="List aggregation servers", responses=ServerOutput(many=True), tags=["servers"])
    def get(self, request: Request) -> Response:
        return self.paginated(request, servers_with_spare().order_by("name"), ServerOutput)

    @extend_schema(
        summary="Create an aggregation server",
        description="The response carries the server's API token in `token`, shown this once.",
        request=InputSerializer,
        responses={201: ServerCreatedOutput},
        tags=["servers"],
    )
    def post(self, request: Request) -> Response:
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        server, token = services.server_create(actor=self.actor(request), **data.validated_data)
        server.token = token  # type: ignore[attr-defined]
        return Response(ServerCreatedOutput(server).data, status=status.HTTP_201_CREATED)


class ServerDetailApi(ApiView):
    permission_classes = [IsStaff]

    class InputSerializer(StrictSerializer):
        name = serializers.CharField(max_length=100, required=False)
        region = serializers.PrimaryKeyRelatedField(queryset=Region.objects.all(), required=False)
        hostname = serializers.CharField(max_length=253, required=False)
        public_ipv4 = serializers.IPAddressField(protocol="IPv4", required=False)
        public_ipv6 = serializers.IPAddressField(protocol="IPv6", required=False, allow_null=True)
        tunnel_port_min = serializers.IntegerField(min_value=1, max_value=65535, required=False)
        tunnel_port_max = serializers.IntegerField(min_value=1, max_value=65535, required=False)
        capacity = serializers.IntegerField(min_value=0, max_value=65535, required=False)
        wg_public_key = serializers.CharField(max_length=64, allow_blank=True, required=False)
        status = serializers.ChoiceField(choices=ServerStatus.choices, required=False)

    @extend_schema(summary="An aggregation server", responses=ServerOutput, tags=["servers"])
    def get(self, request: Request, server_id: UUID) -> Response:
        return Response(ServerOutput(_get(AggregationServer, server_id, "server", servers_with_spare())).data)

    @extend_schema(
        summary="Change an aggregation server (incl. status active/draining/down)",
        request=InputSerializer,
        responses=ServerOutput,
        tags=["servers"],
    )
    def patch(self, request: Request, server_id: UUID) -> Response:
        server = _get(AggregationServer, server_id, "server")
        data = self.InputSerializer(data=request.data, partial=True)
        data.is_valid(raise_exception=True)
        services.server_update(actor=self.actor(request), server=server, **data.validated_data)
        return Response(ServerOutput(_get(AggregationServer, server_id, "server", servers_with_spare())).data)


class ServerRotateTokenApi(ApiView):
    permission_classes = [IsStaff]

    @extend_schema(
        summary="Issue a new server token (the old one stops working)",
        request=None,
        responses={200: inline_serializer("ServerToken", {"token": serializers.CharField()})},
        tags=["servers"],
    )
    def post(self, request: Request, server_id: UUID) -> Response:
        server = _get(AggregationServer, server_id, "server")
        token = services.server_rotate_token(actor=self.actor(request), server=server)
        return Response({"token": token})


# --- pools ------------------------------------------------------------------------------------------


class PoolOutput(serializers.ModelSerializer):
    cidr = serializers.CharField(read_only=True)
    utilisation = serializers.SerializerMethodField()

    class Meta:
        model = AddressPool
        fields = [
            "id",
            "name",
            "cidr",
            "purpose",
            "prefix_length",
            "region",
            "server",
            "created_at",
            "utilisation",
        ]

    @extend_schema_field(
        inline_serializer(
            "PoolUtilisation",
            {
                "size": serializers.IntegerField(),
                "active": serializers.IntegerField(),
                "quarantined": serializers.IntegerField(),
                "free": serializers.IntegerField(),
            },
        )
    )
    def get_utilisation(self, pool: AddressPool) -> dict[str, int]:
        return pool_utilisation(pool)


class PoolListApi(ApiView):
    permission_classes = [IsStaff]

    class InputSerializer(StrictSerializer):
        name = serializers.CharField(max_length=100)
        cidr = serializers.CharField(max_length=64)
        purpose = serializers.ChoiceField(choices=PoolPurpose.choices)
        prefix_length = serializers.IntegerField(min_value=0, max_value=128, required=False, allow_null=True)
        region = serializers.PrimaryKeyRelatedField(
            queryset=Region.objects.all(), required=False, allow_null=True
        )
        server = serializers.PrimaryKeyRelatedField(
            queryset=AggregationServer.objects.all(), required=False, allow_null=True
        )

    @extend_schema(
        summary="List address pools with utilisation", responses=PoolOutput(many=True), tags=["pools"]
    )
    def get(self, request: Request) -> Response:
        return self.paginated(request, pools_with_utilisation().order_by("name"), PoolOutput)

    @extend_schema(
        summary="Create an address pool", request=InputSerializer, responses={201: PoolOutput}, tags=["pools"]
    )
    def post(self, request: Request) -> Response:
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        pool = services.pool_create(actor=self.actor(request), **data.validated_data)
        pool = pools_with_utilisation().get(pk=pool.pk)
        return Response(PoolOutput(pool).data, status=status.HTTP_201_CREATED)


class PoolDetailApi(ApiView):
    permission_classes = [IsStaff]

    @extend_schema(summary="An address pool with utilisation", responses=PoolOutput, tags=["pools"])
    def get(self, request: Request, pool_id: UUID) -> Response:
        return Response(PoolOutput(_get(AddressPool, pool_id, "pool", pools_with_utilisation())).data)
