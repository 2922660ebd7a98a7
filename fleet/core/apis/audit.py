"""The audit trail: a box's entries, and the entries people may read (staff all; owners and admins
those of their organisations)."""

from __future__ import annotations

import uuid

from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework.request import Request
from rest_framework.response import Response

from fleet.core import selectors
from fleet.core.access import box_for
from fleet.core.apis.base import ApiView
from fleet.core.choices import Role
from fleet.core.permissions import IsPerson
from fleet.core.serializers import AuditEntrySerializer


class BoxAuditApi(ApiView):
    permission_classes = [IsPerson]

    @extend_schema(responses={200: AuditEntrySerializer(many=True)})
    def get(self, request: Request, box_id: uuid.UUID) -> Response:
        box = box_for(request.user, box_id, Role.VIEWER, request.auth)
        return self.paginated(request, selectors.audit_of_box(box=box), AuditEntrySerializer)


class AuditListApi(ApiView):
    """Staff read every entry; owners and admins the entries of their organisations."""

    permission_classes = [IsPerson]

    @extend_schema(
        parameters=[
            OpenApiParameter("action", str, description="action prefix, e.g. box."),
            OpenApiParameter("actor", str),
            OpenApiParameter("serial", str),
            OpenApiParameter("q", str),
        ],
        responses={200: AuditEntrySerializer(many=True)},
    )
    def get(self, request: Request) -> Response:
        filters = {key: request.query_params.get(key) for key in ("action", "actor", "serial", "q")}
        queryset = selectors.audit_visible(user=request.user, auth=request.auth, filters=filters)
        return self.paginated(request, queryset, AuditEntrySerializer)
