"""Endpoints of the fleet core under /api/v1/: people, organisations, tokens, the audit trail."""

from django.urls import path

from fleet.core.apis import audit, people

urlpatterns = [
    # people
    path("me", people.MeApi.as_view(), name="me"),
    path("organizations/", people.OrganizationListApi.as_view(), name="organization-list"),
    path(
        "organizations/<uuid:organization_id>/",
        people.OrganizationDetailApi.as_view(),
        name="organization-detail",
    ),
    path(
        "organizations/<uuid:organization_id>/members/",
        people.MemberListApi.as_view(),
        name="member-list",
    ),
    path(
        "organizations/<uuid:organization_id>/members/<uuid:membership_id>/",
        people.MemberDetailApi.as_view(),
        name="member-detail",
    ),
    path(
        "organizations/<uuid:organization_id>/invitations/",
        people.InvitationCreateApi.as_view(),
        name="invitation-create",
    ),
    path("invitations/accept", people.InvitationAcceptApi.as_view(), name="invitation-accept"),
    path("tokens/", people.ApiTokenListApi.as_view(), name="api-token-list"),
    path("tokens/<uuid:token_id>/", people.ApiTokenDetailApi.as_view(), name="api-token-detail"),
    path(
        "organizations/<uuid:organization_id>/enrollment-tokens/",
        people.EnrollmentTokenListApi.as_view(),
        name="enrollment-token-list",
    ),
    path(
        "organizations/<uuid:organization_id>/enrollment-tokens/<uuid:token_id>/",
        people.EnrollmentTokenDetailApi.as_view(),
        name="enrollment-token-detail",
    ),
    # audit
    path("boxes/<uuid:box_id>/audit", audit.BoxAuditApi.as_view(), name="box-audit"),
    path("audit/", audit.AuditListApi.as_view(), name="audit-list"),
]
