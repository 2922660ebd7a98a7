"""Endpoints about people: who am I, organisations, members, invitations, API and enrollment tokens.
A write resolves the organisation the caller may see; the service it calls decides on the role."""

from __future__ import annotations

import uuid
from typing import Any

from drf_spectacular.utils import extend_schema, extend_schema_field
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response

from fleet.core import selectors
from fleet.core.access import organization_for, organization_visible
from fleet.core.apis.base import ApiView
from fleet.core.apis.schema import ERROR_CONFLICT, error_response
from fleet.core.choices import Role
from fleet.core.errors import InvalidInput, NotFound
from fleet.core.models import ApiToken, EnrollmentToken, Membership, Region
from fleet.core.permissions import IsPerson
from fleet.core.serializers import (
    OrganizationRefSerializer,
    RegionRefSerializer,
    StrictBooleanField,
    StrictCharField,
    StrictIntegerField,
    StrictSerializer,
    StrictUUIDField,
)
from fleet.core.services import (
    api_token_create,
    api_token_revoke,
    enrollment_token_create,
    enrollment_token_revoke,
    invitation_accept,
    member_invite,
    member_remove,
    member_set_role,
    organization_update,
)

_UNSET: Any = object()


class OrganizationOutputSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    name = serializers.CharField()
    slug = serializers.CharField()
    timezone = serializers.CharField()
    preferred_region = serializers.SerializerMethodField()
    created_at = serializers.DateTimeField()

    @extend_schema_field(RegionRefSerializer(allow_null=True))
    def get_preferred_region(self, organization: Any) -> dict[str, Any] | None:
        region = organization.preferred_region
        if region is None:
            return None
        return {"id": str(region.pk), "code": region.code, "name": region.name}


class MemberUserSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    username = serializers.CharField()
    email = serializers.CharField()


class MembershipOutputSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    role = serializers.CharField()
    created_at = serializers.DateTimeField()
    user = serializers.SerializerMethodField()

    @extend_schema_field(MemberUserSerializer)
    def get_user(self, membership: Membership) -> dict[str, Any]:
        user = membership.user
        return {"id": user.pk, "username": user.get_username(), "email": user.email}


class ApiTokenOutputSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    name = serializers.CharField()
    prefix = serializers.CharField(source="token_prefix")
    organization = serializers.SerializerMethodField()
    created_at = serializers.DateTimeField()
    expires_at = serializers.DateTimeField()
    last_used_at = serializers.DateTimeField(allow_null=True)

    @extend_schema_field(OrganizationRefSerializer)
    def get_organization(self, token: ApiToken) -> dict[str, Any]:
        return {"id": str(token.organization_id), "name": token.organization.name}


class EnrollmentTokenOutputSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    name = serializers.CharField()
    prefix = serializers.CharField(source="token_prefix")
    created_at = serializers.DateTimeField()
    expires_at = serializers.DateTimeField()
    single_use = serializers.BooleanField()
    uses = serializers.IntegerField()


class MeMembershipSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    role = serializers.ChoiceField(choices=Role.choices)
    organization = OrganizationRefSerializer()


class MeApi(ApiView):
    permission_classes = [IsPerson]

    class OutputSerializer(serializers.Serializer):
        id = serializers.IntegerField()
        username = serializers.CharField()
        email = serializers.CharField()
        is_staff = serializers.BooleanField()
        memberships = MeMembershipSerializer(many=True)

    @extend_schema(responses={200: OutputSerializer})
    def get(self, request: Request) -> Response:
        user: Any = request.user
        memberships = [
            {
                "id": str(membership.pk),
                "role": membership.role,
                "organization": {"id": str(membership.organization_id), "name": membership.organization.name},
            }
            for membership in selectors.memberships_of_user(user=user, auth=request.auth)
        ]
        body = {
            "id": user.pk,
            "username": user.get_username(),
            "email": user.email,
            "is_staff": user.is_staff,
            "memberships": memberships,
        }
        return Response(self.OutputSerializer(body).data)


class OrganizationListApi(ApiView):
    permission_classes = [IsPerson]

    @extend_schema(responses={200: OrganizationOutputSerializer(many=True)})
    def get(self, request: Request) -> Response:
        queryset = selectors.organizations_visible(user=request.user, auth=request.auth).order_by("name")
        return self.paginated(request, queryset, OrganizationOutputSerializer)


def _region_resolve(value: str | None) -> Any:
    if value is None:
        return None
    try:
        region = Region.objects.filter(pk=uuid.UUID(value)).first()
    except ValueError:
        region = Region.objects.filter(code=value).first()
    if region is None:
        raise InvalidInput("no such region (give its id or code)", field="preferred_region")
    return region


class OrganizationDetailApi(ApiView):
    permission_classes = [IsPerson]

    class InputSerializer(StrictSerializer):
        name = StrictCharField(required=False, max_length=120)
        preferred_region = StrictCharField(required=False, allow_null=True, max_length=64)
        timezone = StrictCharField(required=False, max_length=64)

    @extend_schema(responses={200: OrganizationOutputSerializer})
    def get(self, request: Request, organization_id: uuid.UUID) -> Response:
        organization = organization_for(request.user, organization_id, Role.VIEWER, request.auth)
        return Response(OrganizationOutputSerializer(organization).data)

    @extend_schema(
        request=InputSerializer, responses={200: OrganizationOutputSerializer, 409: ERROR_CONFLICT}
    )
    def patch(self, request: Request, organization_id: uuid.UUID) -> Response:
        actor = self.actor(request)
        organization = organization_visible(actor, organization_id)
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        values = data.validated_data
        region = _region_resolve(values["preferred_region"]) if "preferred_region" in values else _UNSET
        kwargs: dict[str, Any] = {"name": values.get("name"), "timezone_name": values.get("timezone")}
        if region is not _UNSET:
            kwargs["preferred_region"] = region
        organization = organization_update(actor=actor, organization=organization, **kwargs)
        return Response(OrganizationOutputSerializer(organization).data)


class MemberListApi(ApiView):
    permission_classes = [IsPerson]

    @extend_schema(responses={200: MembershipOutputSerializer(many=True)})
    def get(self, request: Request, organization_id: uuid.UUID) -> Response:
        organization = organization_for(request.user, organization_id, Role.VIEWER, request.auth)
        return self.paginated(
            request, selectors.members_of_organization(organization=organization), MembershipOutputSerializer
        )


class MemberDetailApi(ApiView):
    permission_classes = [IsPerson]

    class InputSerializer(StrictSerializer):
        role = serializers.ChoiceField(choices=Role.choices)

    @extend_schema(request=InputSerializer, responses={200: MembershipOutputSerializer, 409: ERROR_CONFLICT})
    def patch(self, request: Request, organization_id: uuid.UUID, membership_id: uuid.UUID) -> Response:
        actor = self.actor(request)
        membership = selectors.membership_get(
            organization=organization_visible(actor, organization_id), membership_id=membership_id
        )
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        membership = member_set_role(actor=actor, membership=membership, **data.validated_data)
        return Response(MembershipOutputSerializer(membership).data)

    @extend_schema(request=None, responses={204: None, 409: ERROR_CONFLICT})
    def delete(self, request: Request, organization_id: uuid.UUID, membership_id: uuid.UUID) -> Response:
        actor = self.actor(request)
        membership = selectors.membership_get(
            organization=organization_visible(actor, organization_id), membership_id=membership_id
        )
        member_remove(actor=actor, membership=membership)
        return Response(status=status.HTTP_204_NO_CONTENT)


class InvitationCreateApi(ApiView):
    permission_classes = [IsPerson]

    class InputSerializer(StrictSerializer):
        email = StrictCharField(max_length=254)
        role = serializers.ChoiceField(choices=Role.choices)

    class OutputSerializer(serializers.Serializer):
        id = serializers.UUIDField()
        email = serializers.EmailField()
        role = serializers.CharField()
        expires_at = serializers.DateTimeField()

    @extend_schema(request=InputSerializer, responses={201: OutputSerializer, 409: ERROR_CONFLICT})
    def post(self, request: Request, organization_id: uuid.UUID) -> Response:
        actor = self.actor(request)
        organization = organization_visible(actor, organization_id)
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        invitation, _token = member_invite(actor=actor, organization=organization, **data.validated_data)
        return Response(self.OutputSerializer(invitation).data, status=status.HTTP_201_CREATED)


class InvitationAcceptApi(ApiView):
    permission_classes = [IsPerson]

    class InputSerializer(StrictSerializer):
        token = StrictCharField(max_length=200)

    @extend_schema(
        request=InputSerializer,
        responses={
            201: MembershipOutputSerializer,
            404: error_response(404, "No such invitation, or it expired"),
            409: ERROR_CONFLICT,
        },
    )
    def post(self, request: Request) -> Response:
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        membership = invitation_accept(user=request.user, **data.validated_data)
        return Response(MembershipOutputSerializer(membership).data, status=status.HTTP_201_CREATED)


class ApiTokenListApi(ApiView):
    """The caller's own personal API tokens."""

    permission_classes = [IsPerson]

    class InputSerializer(StrictSerializer):
        name = StrictCharField(max_length=100)
        organization = StrictUUIDField()
        expires_in_days = StrictIntegerField(required=False, allow_null=True, min_value=1, max_value=365)

    class CreatedSerializer(ApiTokenOutputSerializer):
        token = serializers.CharField()

    @extend_schema(responses={200: ApiTokenOutputSerializer(many=True)})
    def get(self, request: Request) -> Response:
        return self.paginated(
            request, selectors.api_tokens_of_user(user=request.user), ApiTokenOutputSerializer
        )

    @extend_schema(
        request=InputSerializer,
        responses={201: CreatedSerializer, 404: error_response(404, "No such organisation")},
    )
    def post(self, request: Request) -> Response:
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        values = data.validated_data
        actor = self.actor(request)
        organization = organization_visible(actor, values["organization"])
        token, value = api_token_create(
            actor=actor,
            user=request.user,
            organization=organization,
            name=values["name"],
            expires_in_days=values.get("expires_in_days"),
        )
        # The value is shown this once.
        token.token = value  # type: ignore[attr-defined]
        return Response(self.CreatedSerializer(token).data, status=status.HTTP_201_CREATED)


class ApiTokenDetailApi(ApiView):
    permission_classes = [IsPerson]

    @extend_schema(request=None, responses={204: None})
    def delete(self, request: Request, token_id: uuid.UUID) -> Response:
        token = selectors.api_token_of_user(user=request.user, token_id=token_id)
        api_token_revoke(actor=self.actor(request), token=token)
        return Response(status=status.HTTP_204_NO_CONTENT)


class EnrollmentTokenListApi(ApiView):
    permission_classes = [IsPerson]

    class InputSerializer(StrictSerializer):
        name = StrictCharField(max_length=100)
        expires_in_hours = StrictIntegerField(min_value=1, max_value=24 * 365)
        single_use = StrictBooleanField(required=False, default=False)

    class CreatedSerializer(EnrollmentTokenOutputSerializer):
        token = serializers.CharField()

    @extend_schema(responses={200: EnrollmentTokenOutputSerializer(many=True)})
    def get(self, request: Request, organization_id: uuid.UUID) -> Response:
        organization = organization_for(request.user, organization_id, Role.ADMIN, request.auth)
        return self.paginated(
            request,
            selectors.enrollment_tokens_of_organization(organization=organization),
            EnrollmentTokenOutputSerializer,
        )

    @extend_schema(request=InputSerializer, responses={201: CreatedSerializer})
    def post(self, request: Request, organization_id: uuid.UUID) -> Response:
        actor = self.actor(request)
        organization = organization_visible(actor, organization_id)
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        token, value = enrollment_token_create(actor=actor, organization=organization, **data.validated_data)
        # The value is shown this once.
        token.token = value  # type: ignore[attr-defined]
        return Response(self.CreatedSerializer(token).data, status=status.HTTP_201_CREATED)


class EnrollmentTokenDetailApi(ApiView):
    permission_classes = [IsPerson]

    @extend_schema(request=None, responses={204: None})
    def delete(self, request: Request, organization_id: uuid.UUID, token_id: uuid.UUID) -> Response:
        actor = self.actor(request)
        organization = organization_visible(actor, organization_id)
        token = EnrollmentToken.objects.filter(pk=token_id, organization=organization).first()
        if token is None:
            raise NotFound("enrollment token not found")
        enrollment_token_revoke(actor=actor, token=token)
        return Response(status=status.HTTP_204_NO_CONTENT)
