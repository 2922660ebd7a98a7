"""Provisioning API routes, mounted under /api/v1/ by config/urls.py."""

from django.urls import path

from provisioning import apis

urlpatterns = [
    path("servers/self/peers", apis.ServerPeersApi.as_view(), name="server-peers"),
    path("regions/", apis.RegionListApi.as_view(), name="region-list"),
    path("servers/", apis.ServerListApi.as_view(), name="server-list"),
    path("servers/<uuid:server_id>/", apis.ServerDetailApi.as_view(), name="server-detail"),
    path(
        "servers/<uuid:server_id>/rotate-token",
        apis.ServerRotateTokenApi.as_view(),
        name="server-rotate-token",
    ),
    path("pools/", apis.PoolListApi.as_view(), name="pool-list"),
    path("pools/<uuid:pool_id>/", apis.PoolDetailApi.as_view(), name="pool-detail"),
    path(
        "boxes/<uuid:box_id>/reassign-server", apis.BoxReassignServerApi.as_view(), name="box-reassign-server"
    ),
    path(
        "boxes/<uuid:box_id>/release-addresses",
        apis.BoxReleaseAddressesApi.as_view(),
        name="box-release-addresses",
    ),
    path(
        "boxes/<uuid:box_id>/revoke-credentials",
        apis.BoxRevokeCredentialsApi.as_view(),
        name="box-revoke-credentials",
    ),
    path("boxes/<uuid:box_id>/decommission", apis.BoxDecommissionApi.as_view(), name="box-decommission"),
]
