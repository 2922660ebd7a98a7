"""REST edge for firmware: staff manage releases and rollouts, customers manage their boxes' upgrade
policy and upgrades, agents download images (HTTP Range). Each view parses, calls one service or
selector, and serialises."""

from __future__ import annotations

import re
from typing import Any
from uuid import UUID

from django.http import HttpResponse, StreamingHttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema, extend_schema_field
from rest_framework import serializers, status
from rest_framework.parsers import FormParser, MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response

from fleet.core.access import box_for
from fleet.core.apis.base import ApiView
from fleet.core.apis.schema import ERROR_CONFLICT, error_response
from fleet.core.choices import ReleaseChannel, Role
from fleet.core.errors import InvalidInput, NotFound
from fleet.core.permissions import IsAgent, IsPerson, IsStaff
from fleet.core.serializers import QuerySerializer, StrictSerializer
from fleet.firmware import selectors, services
from fleet.firmware.choices import ReleaseState, RolloutAction, UpgradeState
from fleet.firmware.models import Release, Rollout, Upgrade

# --- serialisers -----------------------------------------------------------------------------------


class ReleaseOutputSerializer(serializers.ModelSerializer):
    image_uploaded = serializers.SerializerMethodField()

    class Meta:
        model = Release
        fields = [
            "id",
            "version",
            "hardware_models",
            "channel",
            "state",
            "image_uploaded",
            "external_url",
            "size",
            "sha256",
            "signature",
            "notes",
            "published_at",
            "withdrawn_at",
            "withdrawn_reason",
            "created_at",
        ]

    @extend_schema_field(OpenApiTypes.BOOL)
    def get_image_uploaded(self, release: Release) -> bool:
        return bool(release.image)


class RolloutOutputSerializer(serializers.ModelSerializer):
    release = serializers.UUIDField(source="release_id")
    version = serializers.CharField(source="release.version")
    actions = serializers.ListField(
        child=serializers.ChoiceField(choices=RolloutAction.choices),
        source="next_actions",
        read_only=True,
        help_text="What may be done to the rollout now: POST rollouts/<id>/<action>.",
    )

    class Meta:
        model = Rollout
        fields = [
            "id",
            "name",
            "release",
            "version",
            "state",
            "target",
            "phases",
            "phase_sizes",
            "soak_s",
            "max_failure_pct",
            "max_failures",
            "max_in_flight",
            "force",
            "health_window_s",
            "upgrade_timeout_s",
            "offline_grace_s",
            "start_at",
            "current_phase",
            "pause_reason",
            "total",
            "skipped",
            "started_at",
            "finished_at",
            "created_at",
            "actions",
        ]


class UpgradeOutputSerializer(serializers.ModelSerializer):
    box = serializers.UUIDField(source="box_id")
    rollout = serializers.UUIDField(source="rollout_id", allow_null=True)
    release = serializers.UUIDField(source="release_id")

    class Meta:
        model = Upgrade
        fields = [
            "id",
            "box",
            "rollout",
            "release",
            "phase",
            "state",
            "reason",
            "from_version",
            "progress",
            "not_before",
            "forced",
            "attempt",
            "command_id",
            "state_changed_at",
            "pending_at",
            "scheduled_at",
            "sent_at",
            "downloading_at",
            "verifying_at",
            "installing_at",
            "rebooting_at",
            "succeeded_at",
            "failed_at",
            "timed_out_at",
            "cancelled_at",
            "skipped_at",
        ]


class BoxUpgradeOutputSerializer(UpgradeOutputSerializer):
    version = serializers.CharField(source="release.version")

    class Meta(UpgradeOutputSerializer.Meta):
        fields = [*UpgradeOutputSerializer.Meta.fields, "version"]


class RolloutActionOutputSerializer(RolloutOutputSerializer):
    retried = serializers.IntegerField(
        required=False, help_text="retry-failed only: how many failed upgrades were queued again"
    )

    class Meta(RolloutOutputSerializer.Meta):
        fields = [*RolloutOutputSerializer.Meta.fields, "retried"]


class RolloutPhaseProgressSerializer(serializers.Serializer):
    index = serializers.IntegerField()
    percent = serializers.IntegerField()
    size = serializers.IntegerField()
    open = serializers.BooleanField()
    states = serializers.DictField(child=serializers.IntegerField(), help_text="upgrades per state")


class RolloutFailureReasonSerializer(serializers.Serializer):
    state = serializers.CharField()
    reason = serializers.CharField()
    count = serializers.IntegerField()


class RolloutProgressSerializer(serializers.Serializer):
    state = serializers.CharField()
    current_phase = serializers.IntegerField()
    phase_opened_at = serializers.DateTimeField(allow_null=True)
    pause_reason = serializers.CharField()
    total = serializers.IntegerField()
    counts = serializers.DictField(child=serializers.IntegerField(), help_text="upgrades per state")
    in_flight = serializers.IntegerField()
    phases = RolloutPhaseProgressSerializer(many=True)
    failure_reasons = RolloutFailureReasonSerializer(many=True)


class RolloutPreviewOutputSerializer(serializers.Serializer):
    matched = serializers.IntegerField(help_text="claimed boxes the target selects")
    eligible = serializers.IntegerField(help_text="of those, the boxes that would be upgraded")
    filters = serializers.DictField(child=serializers.IntegerField(), help_text="boxes each filter keeps")
    skipped = serializers.DictField(child=serializers.IntegerField(), help_text="boxes skipped, by reason")
    phase_sizes = serializers.ListField(child=serializers.IntegerField())


class RolloutDetailOutputSerializer(RolloutOutputSerializer):
    progress = RolloutProgressSerializer(read_only=True)

    class Meta(RolloutOutputSerializer.Meta):
        fields = [*RolloutOutputSerializer.Meta.fields, "progress"]


def _uuid(value: Any, what: str) -> UUID:
    try:
        return UUID(str(value))
    except ValueError as exc:
        raise NotFound(f"{what} not found") from exc


# --- releases (staff) ------------------------------------------------------------------------------


class ReleaseListApi(ApiView):
    permission_classes = [IsStaff]

    class FilterSerializer(QuerySerializer):
        state = serializers.ChoiceField(choices=ReleaseState.choices, required=False)
        channel = serializers.ChoiceField(choices=ReleaseChannel.choices, required=False)

    class InputSerializer(StrictSerializer):
        version = serializers.CharField(max_length=64)
        hardware_models = serializers.ListField(child=serializers.CharField(max_length=64), min_length=1)
        channel = serializers.ChoiceField(choices=ReleaseChannel.choices, default=ReleaseChannel.STABLE)
        notes = serializers.CharField(required=False, allow_blank=True, default="")
        external_url = serializers.URLField(required=False, allow_blank=True, default="", max_length=500)
        size = serializers.IntegerField(required=False, allow_null=True, default=None, min_value=1)
        sha256 = serializers.CharField(required=False, allow_blank=True, default="", max_length=64)
        signature = serializers.CharField(required=False, allow_blank=True, default="", max_length=100)

    @extend_schema(
        summary="List firmware releases (every state)",
        parameters=[FilterSerializer],
        responses={200: ReleaseOutputSerializer(many=True)},
        tags=["firmware"],
    )
    def get(self, request: Request) -> Response:
        filters = self.FilterSerializer(data=request.query_params)
        filters.is_valid(raise_exception=True)
        releases = selectors.releases_list(include_unpublished=True)
        if "state" in filters.validated_data:
            releases = releases.filter(state=filters.validated_data["state"])
        if "channel" in filters.validated_data:
            releases = releases.filter(channel=filters.validated_data["channel"])
        return self.paginated(request, releases, ReleaseOutputSerializer)

    @extend_schema(
        summary="Create a draft release",
        request=InputSerializer,
        responses={201: ReleaseOutputSerializer, 409: ERROR_CONFLICT},
        tags=["firmware"],
    )
    def post(self, request: Request) -> Response:
        payload = self.InputSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        release = services.release_create(actor=self.actor(request), **payload.validated_data)
        return Response(ReleaseOutputSerializer(release).data, status=status.HTTP_201_CREATED)


class ReleaseDetailApi(ApiView):
    permission_classes = [IsStaff]

    class InputSerializer(StrictSerializer):
        notes = serializers.CharField(required=False, allow_blank=True)
        signature = serializers.CharField(required=False, max_length=100)
        hardware_models = serializers.ListField(
            child=serializers.CharField(max_length=64), min_length=1, required=False
        )
        channel = serializers.ChoiceField(choices=ReleaseChannel.choices, required=False)
        external_url = serializers.URLField(required=False, max_length=500)
        size = serializers.IntegerField(required=False, min_value=1)
        sha256 = serializers.CharField(required=False, max_length=64)

    @extend_schema(summary="A release", responses={200: ReleaseOutputSerializer}, tags=["firmware"])
    def get(self, request: Request, release_id: str) -> Response:
        return Response(ReleaseOutputSerializer(selectors.release_get(release_id=release_id)).data)

    @extend_schema(
        summary="Change a release (a published one: its notes only)",
        request=InputSerializer,
        responses={200: ReleaseOutputSerializer, 409: ERROR_CONFLICT},
        tags=["firmware"],
    )
    def patch(self, request: Request, release_id: str) -> Response:
        release = selectors.release_get(release_id=release_id)
        payload = self.InputSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        release = services.release_update(
            actor=self.actor(request), release=release, **payload.validated_data
        )
        return Response(ReleaseOutputSerializer(release).data)


class ReleaseImageApi(ApiView):
    """PUT/POST multipart with an ``image`` file: stores it, computing size and SHA-256."""

    permission_classes = [IsStaff]
    parser_classes = [MultiPartParser, FormParser]
    # An image is bigger than the JSON body limit: Django's multipart parser streams the file part
    # to a temporary file in chunks, and the service reads it back in chunks.
    streams_body = True

    @extend_schema(
        summary="Upload the image of a draft release (multipart field `image`)",
        request={
            "multipart/form-data": {
                "type": "object",
                "properties": {"image": {"type": "string", "format": "binary"}},
                "required": ["image"],
            }
        },
        responses={
            200: ReleaseOutputSerializer,
            409: ERROR_CONFLICT,
            413: error_response(413),
            415: error_response(415, "The body is not multipart/form-data"),
        },
        tags=["firmware"],
    )
    def post(self, request: Request, release_id: str) -> Response:
        release = selectors.release_get(release_id=release_id)
        upload = request.FILES.get("image")
        if upload is None:
            raise InvalidInput("attach the image as the multipart field 'image'", field="image")
        release = services.release_image_upload(actor=self.actor(request), release=release, upload=upload)
        return Response(ReleaseOutputSerializer(release).data)

    put = post


class ReleasePublishApi(ApiView):
    permission_classes = [IsStaff]

    @extend_schema(
        summary="Publish a draft release",
        request=None,
        responses={200: ReleaseOutputSerializer, 409: ERROR_CONFLICT},
        tags=["firmware"],
    )
    def post(self, request: Request, release_id: str) -> Response:
        release = selectors.release_get(release_id=release_id)
        release = services.release_publish(actor=self.actor(request), release=release)
        return Response(ReleaseOutputSerializer(release).data)


class ReleaseWithdrawApi(ApiView):
    permission_classes = [IsStaff]

    class InputSerializer(StrictSerializer):
        reason = serializers.CharField(required=False, allow_blank=True, default="", max_length=2000)

    @extend_schema(
        summary="Withdraw a published release (downloads stop at once)",
        request=InputSerializer,
        responses={200: ReleaseOutputSerializer, 409: ERROR_CONFLICT},
        tags=["firmware"],
    )
    def post(self, request: Request, release_id: str) -> Response:
        payload = self.InputSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        release = selectors.release_get(release_id=release_id)
        release = services.release_withdraw(
            actor=self.actor(request), release=release, **payload.validated_data
        )
        return Response(ReleaseOutputSerializer(release).data)


# --- rollouts (staff) ------------------------------------------------------------------------------


class RolloutInputSerializer(StrictSerializer):
    release = serializers.UUIDField()
    name = serializers.CharField(max_length=120)
    target = serializers.JSONField(required=False, default=dict)
    phases = serializers.ListField(child=serializers.IntegerField(), required=False, default=[1, 10, 50, 100])
    soak_s = serializers.IntegerField(required=False, default=3600)
    max_failure_pct = serializers.FloatField(required=False, default=2.0)
    max_failures = serializers.IntegerField(required=False, allow_null=True, default=None)
    max_in_flight = serializers.IntegerField(required=False, default=500)
    force = serializers.BooleanField(required=False, default=False)
    health_window_s = serializers.IntegerField(required=False, default=900)
    upgrade_timeout_s = serializers.IntegerField(required=False, default=3600)
    offline_grace_s = serializers.IntegerField(required=False, default=7 * 24 * 3600)
    start_at = serializers.DateTimeField(required=False, allow_null=True, default=None)


class RolloutListApi(ApiView):
    permission_classes = [IsStaff]

    @extend_schema(
        summary="List rollouts", responses={200: RolloutOutputSerializer(many=True)}, tags=["rollouts"]
    )
    def get(self, request: Request) -> Response:
        return self.paginated(request, selectors.rollouts_list(), RolloutOutputSerializer)

    @extend_schema(
        summary="Create a rollout of a published release",
        request=RolloutInputSerializer,
        responses={
            201: RolloutOutputSerializer,
            404: error_response(404, "No such release"),
            409: ERROR_CONFLICT,
        },
        tags=["rollouts"],
    )
    def post(self, request: Request) -> Response:
        payload = RolloutInputSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        data = dict(payload.validated_data)
        release = selectors.release_get(release_id=data.pop("release"))
        rollout = services.rollout_create(actor=self.actor(request), release=release, **data)
        body = RolloutOutputSerializer(rollout).data
        return Response(body, status=status.HTTP_201_CREATED)


class RolloutPreviewApi(ApiView):
    """What a rollout with this release, target and phases would do: nothing is written."""

    permission_classes = [IsStaff]

    class InputSerializer(StrictSerializer):
        release = serializers.UUIDField()
        target = serializers.JSONField(required=False, default=dict)
        phases = serializers.ListField(
            child=serializers.IntegerField(), required=False, default=[1, 10, 50, 100]
        )
        force = serializers.BooleanField(required=False, default=False)

    @extend_schema(
        summary="Preview a rollout: the boxes it would select, skip and upgrade per phase",
        request=InputSerializer,
        responses={200: RolloutPreviewOutputSerializer, 404: error_response(404, "No such release")},
        tags=["rollouts"],
    )
    def post(self, request: Request) -> Response:
        payload = self.InputSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        data = payload.validated_data
        preview = selectors.rollout_preview(
            release=selectors.release_get(release_id=data["release"]),
            target=data["target"],
            phases=data["phases"],
            force=data["force"],
        )
        return Response(preview)


class RolloutDetailApi(ApiView):
    permission_classes = [IsStaff]

    @extend_schema(
        summary="A rollout with its progress",
        responses={200: RolloutDetailOutputSerializer},
        tags=["rollouts"],
    )
    def get(self, request: Request, rollout_id: str) -> Response:
        rollout = selectors.rollout_get(rollout_id=rollout_id)
        body = RolloutOutputSerializer(rollout).data
        body["progress"] = selectors.rollout_progress(rollout=rollout)
        return Response(body)


class RolloutActionApi(ApiView):
    """POST rollouts/<id>/<action>: start, pause, resume, abort, retry-failed (RolloutAction); the
    rollout's ``actions`` say which its state allows."""

    permission_classes = [IsStaff]
    action = ""

    class InputSerializer(StrictSerializer):
        reason = serializers.CharField(required=False, allow_blank=True, default="", max_length=2000)
        boxes = serializers.ListField(
            child=serializers.UUIDField(), required=False, allow_null=True, default=None
        )

    @extend_schema(
        summary="Act on a rollout (its `actions` say which its state allows)",
        request=InputSerializer,
        responses={200: RolloutActionOutputSerializer, 409: ERROR_CONFLICT},
        tags=["rollouts"],
    )
    def post(self, request: Request, rollout_id: str) -> Response:
        rollout = selectors.rollout_get(rollout_id=rollout_id)
        payload = self.InputSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        rollout, retried = services.rollout_act(
            actor=self.actor(request),
            rollout=rollout,
            action=self.action,
            reason=payload.validated_data["reason"],
            box_ids=payload.validated_data["boxes"],
        )
        extra = {} if retried is None else {"retried": retried}
        return Response({**RolloutOutputSerializer(rollout).data, **extra})


class RolloutUpgradeListApi(ApiView):
    permission_classes = [IsStaff]

    class FilterSerializer(QuerySerializer):
        state = serializers.ChoiceField(choices=UpgradeState.choices, required=False)

    @extend_schema(
        summary="The upgrades of a rollout",
        parameters=[FilterSerializer],
        responses={200: UpgradeOutputSerializer(many=True)},
        tags=["rollouts"],
    )
    def get(self, request: Request, rollout_id: str) -> Response:
        rollout = selectors.rollout_get(rollout_id=rollout_id)
        filters = self.FilterSerializer(data=request.query_params)
        filters.is_valid(raise_exception=True)
        return self.paginated(
            request,
            selectors.rollout_upgrades(rollout=rollout, state=filters.validated_data.get("state")),
            UpgradeOutputSerializer,
        )


# --- a customer's box ------------------------------------------------------------------------------


class BoxUpgradePolicyApi(ApiView):
    permission_classes = [IsPerson]

    class InputSerializer(StrictSerializer):
        auto_upgrade = serializers.BooleanField(required=False)
        window_days = serializers.ListField(
            child=serializers.IntegerField(min_value=0, max_value=6),
            min_length=1,
            max_length=7,
            required=False,
        )
        window_start = serializers.TimeField(required=False)
        window_end = serializers.TimeField(required=False)

    class OutputSerializer(serializers.Serializer):
        box = serializers.UUIDField()
        auto_upgrade = serializers.BooleanField()
        release_channel = serializers.ChoiceField(choices=ReleaseChannel.choices)
        timezone = serializers.CharField(help_text="the organisation's: the window is in local time")
        window_days = serializers.ListField(
            child=serializers.IntegerField(min_value=0, max_value=6), help_text="0 is Monday"
        )
        window_start = serializers.CharField(help_text="HH:MM")
        window_end = serializers.CharField(help_text="HH:MM")

    def _body(self, box: Any) -> dict[str, Any]:
        policy = selectors.box_upgrade_policy(box=box)
        return {
            "box": str(box.pk),
            "auto_upgrade": box.auto_upgrade,
            "release_channel": box.release_channel,
            "timezone": box.organization.timezone if box.organization else "UTC",
            **services.policy_as_dict(policy),
        }

    @extend_schema(
        summary="A box's upgrade policy (maintenance window)",
        responses={200: OutputSerializer},
        tags=["firmware"],
    )
    def get(self, request: Request, box_id: str) -> Response:
        box = box_for(request.user, box_id, Role.VIEWER, request.auth)
        return Response(self._body(box))

    @extend_schema(
        summary="Change a box's upgrade policy",
        request=InputSerializer,
        responses={200: OutputSerializer, 409: ERROR_CONFLICT},
        tags=["firmware"],
    )
    def patch(self, request: Request, box_id: str) -> Response:
        box = box_for(request.user, box_id, Role.VIEWER, request.auth)
        payload = self.InputSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        services.box_upgrade_policy_update(actor=self.actor(request), box=box, **payload.validated_data)
        return Response(self._body(box))


class BoxUpgradeListApi(ApiView):
    permission_classes = [IsPerson]

    @extend_schema(
        summary="A box's upgrade history",
        responses={200: BoxUpgradeOutputSerializer(many=True)},
        tags=["firmware"],
    )
    def get(self, request: Request, box_id: str) -> Response:
        box = box_for(request.user, box_id, Role.VIEWER, request.auth)
        return self.paginated(request, selectors.box_upgrades(box=box), BoxUpgradeOutputSerializer)


class BoxUpgradeNowApi(ApiView):
    permission_classes = [IsPerson]

    class InputSerializer(StrictSerializer):
        release = serializers.UUIDField(required=False, allow_null=True, default=None)

    @extend_schema(
        summary="Upgrade a box now (to the given or the newest fitting release)",
        request=InputSerializer,
        responses={202: BoxUpgradeOutputSerializer, 409: ERROR_CONFLICT},
        tags=["firmware"],
    )
    def post(self, request: Request, box_id: str) -> Response:
        box = box_for(request.user, box_id, Role.VIEWER, request.auth)
        payload = self.InputSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        release_id = payload.validated_data["release"]
        release = None
        if release_id is not None:
            release = Release.objects.filter(pk=release_id, state=ReleaseState.PUBLISHED).first()
            if release is None:
                raise InvalidInput("no published release with this id", field="release")
        upgrade = services.box_upgrade_now(actor=self.actor(request), box=box, release=release)
        return Response(BoxUpgradeOutputSerializer(upgrade).data, status=status.HTTP_202_ACCEPTED)


class UpgradePostponeApi(ApiView):
    permission_classes = [IsPerson]

    class InputSerializer(StrictSerializer):
        until = serializers.DateTimeField()

    @extend_schema(
        summary="Postpone a waiting upgrade (up to 7 days)",
        request=InputSerializer,
        responses={200: BoxUpgradeOutputSerializer, 409: ERROR_CONFLICT},
        tags=["firmware"],
    )
    def post(self, request: Request, upgrade_id: str) -> Response:
        upgrade = (
            Upgrade.objects.select_related("box", "release").filter(pk=_uuid(upgrade_id, "upgrade")).first()
        )
        if upgrade is None:
            raise NotFound("upgrade not found")
        box_for(request.user, upgrade.box_id, Role.VIEWER, request.auth)  # 404 outside the caller's orgs
        payload = self.InputSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        upgrade = services.upgrade_postpone(
            actor=self.actor(request), upgrade=upgrade, until=payload.validated_data["until"]
        )
        return Response(BoxUpgradeOutputSerializer(upgrade).data)


# --- agents: the image, with HTTP Range ------------------------------------------------------------

_RANGE_RE = re.compile(r"^bytes=(\d*)-(\d*)$")
STREAM_CHUNK = 256 * 1024


def parse_range(header: str | None, size: int) -> tuple[int, int] | str | None:
    """``(start, end)`` inclusive for a single satisfiable range, None to send everything (no header,
    several ranges or a malformed one, which RFC 9110 lets us ignore), "unsatisfiable" otherwise."""
    if not header:
        return None
    match = _RANGE_RE.match(header.strip())
    if not match:
        return None
    first, last = match.groups()
    if not first and not last:
        return None
    if not first:  # the last N bytes
        length = int(last)
        if length == 0:
            return "unsatisfiable"
        return max(size - length, 0), size - 1
    start = int(first)
    end = min(int(last), size - 1) if last else size - 1
    if start >= size or (last and int(last) < start):
        return "unsatisfiable"
    return start, end


def _stream(handle: Any, start: int, length: int) -> Any:
    try:
        handle.seek(start)
        remaining = length
        while remaining > 0:
            chunk = handle.read(min(STREAM_CHUNK, remaining))
            if not chunk:
                break
            remaining -= len(chunk)
            yield chunk
    finally:
        handle.close()


class AgentFirmwareImageApi(ApiView):
    """GET the image of a release for the calling box (agent token). Published releases only, for
    a box whose model it fits; ``Range: bytes=N-`` gives 206 with ``Content-Range`` (resume)."""

    permission_classes = [IsAgent]

    @extend_schema(
        summary="Download a release image (agent token; resumable with Range)",
        parameters=[
            OpenApiParameter("Range", str, OpenApiParameter.HEADER, description="bytes=N-, N-M or -N"),
            OpenApiParameter(
                "If-Range", str, OpenApiParameter.HEADER, description="the ETag of a partial copy"
            ),
        ],
        responses={
            (200, "application/octet-stream"): OpenApiTypes.BINARY,
            (206, "application/octet-stream"): OpenApiResponse(
                OpenApiTypes.BINARY, description="the range asked"
            ),
            416: OpenApiResponse(description="The range is not in the image (Content-Range: bytes */size)"),
        },
        tags=["agent"],
    )
    def get(self, request: Request, release_id: str) -> HttpResponse | StreamingHttpResponse:
        principal: Any = request.user  # an AgentPrincipal (IsAgent)
        release = selectors.release_downloadable_by_box(release_id=release_id, box=principal.box)
        if release is None:
            raise NotFound("release not found")
        size = release.size or release.image.size
        wanted = parse_range(request.headers.get("Range"), size)
        headers = {
            "Accept-Ranges": "bytes",
            "ETag": f'"{release.sha256}"',
            "Cache-Control": "private, no-transform",
        }
        if isinstance(wanted, str):  # unsatisfiable
            refused = HttpResponse(status=416)
            refused["Content-Range"] = f"bytes */{size}"
            return refused
        if_range = request.headers.get("If-Range")
        if wanted is not None and if_range and if_range.strip() != headers["ETag"]:
            wanted = None  # the client's partial copy is of another image: send it whole
        start, end = (0, size - 1) if wanted is None else wanted
        length = end - start + 1
        handle = release.image.open("rb")
        response = StreamingHttpResponse(
            _stream(handle, start, length),
            status=200 if wanted is None else 206,
            content_type="application/octet-stream",
        )
        response["Content-Length"] = str(length)
        if wanted is not None:
            response["Content-Range"] = f"bytes {start}-{end}/{size}"
        response["Content-Disposition"] = f'attachment; filename="{release.version}.img"'
        for name, value in headers.items():
            response[name] = value
        return response
