"""Provisioning endpoints under /api/v1/: the agent's enrollment and configuration, boxes and their
lifecycle, and the infrastructure (regions, servers, pools, a server's peers)."""

from django.urls import path

from provisioning.apis import agent, boxes, infrastructure

urlpatterns = [
    # on-box agent
    path("agent/enroll", agent.AgentEnrollApi.as_view(), name="agent-enroll"),
    path("agent/config", agent.AgentConfigApi.as_view(), name="agent-config"),
    path("agent/config/applied", agent.AgentConfigAppliedApi.as_view(), name="agent-config-applied"),
    # boxes
    path("boxes/", boxes.BoxListApi.as_view(), name="box-list"),
    path("boxes/<uuid:box_id>/", boxes.BoxDetailApi.as_view(), name="box-detail"),
    path("boxes/<uuid:box_id>/wan-policy", boxes.BoxWanPolicyApi.as_view(), name="box-wan-policy"),
    path("boxes/<uuid:box_id>/port-forwards", boxes.BoxPortForwardsApi.as_view(), name="box-port-forwards"),
    path("boxes/<uuid:box_id>/unclaim", boxes.BoxUnclaimApi.as_view(), name="box-unclaim"),
    path("boxes/<uuid:box_id>/transfer", boxes.BoxTransferApi.as_view(), name="box-transfer"),
    path(
        "boxes/<uuid:box_id>/reassign-server",
        boxes.BoxReassignServerApi.as_view(),
        name="box-reassign-server",
    ),
    path(
        "boxes/<uuid:box_id>/release-addresses",
        boxes.BoxReleaseAddressesApi.as_view(),
        name="box-release-addresses",
    ),
    path(
        "boxes/<uuid:box_id>/revoke-credentials",
        boxes.BoxRevokeCredentialsApi.as_view(),
        name="box-revoke-credentials",
    ),
    path("boxes/<uuid:box_id>/decommission", boxes.BoxDecommissionApi.as_view(), name="box-decommission"),
    # infrastructure
    path("servers/self/peers", infrastructure.ServerPeersApi.as_view(), name="server-peers"),
    path("servers/self/report", infrastructure.ServerReportApi.as_view(), name="server-report"),
    path("regions/", infrastructure.RegionListApi.as_view(), name="region-list"),
    path("servers/", infrastructure.ServerListApi.as_view(), name="server-list"),
    path("servers/<uuid:server_id>/", infrastructure.ServerDetailApi.as_view(), name="server-detail"),
    path(
        "servers/<uuid:server_id>/rotate-token",
        infrastructure.ServerRotateTokenApi.as_view(),
        name="server-rotate-token",
    ),
    path("pools/", infrastructure.PoolListApi.as_view(), name="pool-list"),
    path("pools/<uuid:pool_id>/", infrastructure.PoolDetailApi.as_view(), name="pool-detail"),
]
