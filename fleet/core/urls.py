"""Fleet endpoints under /api/v1/ (see docs/api.md)."""

from django.urls import path

from fleet.core.apis import agent, boxes, people

urlpatterns = [
    # on-box agent
    path("agent/enroll", agent.AgentEnrollApi.as_view(), name="agent-enroll"),
    path("agent/config", agent.AgentConfigApi.as_view(), name="agent-config"),
    path("agent/config/applied", agent.AgentConfigAppliedApi.as_view(), name="agent-config-applied"),
    path("agent/speedtest", agent.AgentSpeedtestApi.as_view(), name="agent-speedtest"),
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
    # boxes
    path("boxes/", boxes.BoxListApi.as_view(), name="box-list"),
    path("boxes/claim", boxes.BoxClaimApi.as_view(), name="box-claim"),
    path("boxes/<uuid:box_id>/", boxes.BoxDetailApi.as_view(), name="box-detail"),
    path("boxes/<uuid:box_id>/wan-policy", boxes.BoxWanPolicyApi.as_view(), name="box-wan-policy"),
    path("boxes/<uuid:box_id>/unclaim", boxes.BoxUnclaimApi.as_view(), name="box-unclaim"),
    path("boxes/<uuid:box_id>/transfer", boxes.BoxTransferApi.as_view(), name="box-transfer"),
    path("boxes/<uuid:box_id>/audit", boxes.BoxAuditApi.as_view(), name="box-audit"),
    path("audit/", boxes.AuditListApi.as_view(), name="audit-list"),
]
