"""The claim endpoint under /api/v1/ (``POST boxes/claim``): by serial + claim code (every box; imported
OTB hardware also gets its pending device linked by MAC) or by the device id a stock OverTheBox box
shows. It lives here, above provisioning, because a claim may link an OTB device; it parses, calls one
binding service and answers with the box, as every box endpoint does."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import status
from rest_framework.request import Request
from rest_framework.response import Response

from fleet.core.access import organization_visible
from fleet.core.apis.base import ApiView
from fleet.core.apis.schema import ERROR_CONFLICT, ERROR_RATE_LIMITED, error_response
from fleet.core.errors import InvalidInput
from fleet.core.permissions import IsPerson
from fleet.core.selectors import memberships_of_user
from fleet.core.serializers import SerialField, StrictCharField, StrictSerializer, StrictUUIDField
from otbcompat.binding import box_claim_with_device, device_claim
from provisioning.apis.boxes import box_output
from provisioning.serializers import BoxOutputSerializer


class BoxClaimApi(ApiView):
    permission_classes = [IsPerson]

    class InputSerializer(StrictSerializer):
        serial = SerialField(required=False)
        claim_code = StrictCharField(required=False, max_length=128, trim_whitespace=False)
        device_id = StrictCharField(required=False, max_length=64, trim_whitespace=True)
        organization = StrictUUIDField(required=False)

        def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
            if "device_id" in attrs and "serial" not in attrs and "claim_code" not in attrs:
                return attrs
            for field in ("serial", "claim_code"):
                if field not in attrs:
                    raise InvalidInput(
                        "this field is required (or give only the device_id an OverTheBox box shows)",
                        field=field,
                    )
            return attrs

    @extend_schema(
        request=InputSerializer,
        responses={
            201: BoxOutputSerializer,
            200: OpenApiResponse(BoxOutputSerializer, description="the organisation already held it"),
            404: error_response(404, "No such organisation"),
            409: ERROR_CONFLICT,
            429: ERROR_RATE_LIMITED,
        },
    )
    def post(self, request: Request) -> Response:
        """201 with the box when this call claimed it (or linked a device to it); 200 with the box,
        unchanged, when the organisation already held it (a retried claim is harmless). A box linked to
        an OverTheBox device has ``protocol`` ``otb``."""
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        values = data.validated_data
        organization_id = values.get("organization")
        if organization_id is None:
            memberships = list(memberships_of_user(user=request.user, auth=request.auth)[:2])
            if len(memberships) != 1:
                raise InvalidInput("say which organization claims the box", field="organization")
            organization_id = memberships[0].organization_id
        actor = self.actor(request)
        organization = organization_visible(actor, organization_id)
        if "serial" not in values:
            claimed = device_claim(actor=actor, organization=organization, device_id=values["device_id"])
        else:
            claimed = box_claim_with_device(
                actor=actor,
                organization=organization,
                serial=values["serial"],
                claim_code=values["claim_code"],
                device_id=values.get("device_id"),
            )
        return Response(
            box_output(claimed.box),
            status=status.HTTP_201_CREATED if claimed.newly_claimed else status.HTTP_200_OK,
        )
