from django.urls import path

from fleet.firmware import apis
from fleet.firmware.choices import RolloutAction

urlpatterns = [
    path("firmware/releases/", apis.ReleaseListApi.as_view(), name="firmware-releases"),
    path("firmware/releases/<str:release_id>/", apis.ReleaseDetailApi.as_view(), name="firmware-release"),
    path(
        "firmware/releases/<str:release_id>/image",
        apis.ReleaseImageApi.as_view(),
        name="firmware-release-image",
    ),
    path(
        "firmware/releases/<str:release_id>/publish",
        apis.ReleasePublishApi.as_view(),
        name="firmware-release-publish",
    ),
    path(
        "firmware/releases/<str:release_id>/withdraw",
        apis.ReleaseWithdrawApi.as_view(),
        name="firmware-release-withdraw",
    ),
    path("rollouts/", apis.RolloutListApi.as_view(), name="rollouts"),
    path("rollouts/preview", apis.RolloutPreviewApi.as_view(), name="rollout-preview"),
    path("rollouts/<str:rollout_id>/", apis.RolloutDetailApi.as_view(), name="rollout-detail"),
    path(
        "rollouts/<str:rollout_id>/upgrades/", apis.RolloutUpgradeListApi.as_view(), name="rollout-upgrades"
    ),
    *[
        path(
            f"rollouts/<str:rollout_id>/{action}",
            apis.RolloutActionApi.as_view(action=action),
            name=f"rollout-{action}",
        )
        for action in RolloutAction.values
    ],
    path("boxes/<str:box_id>/upgrade-policy", apis.BoxUpgradePolicyApi.as_view(), name="box-upgrade-policy"),
    path("boxes/<str:box_id>/upgrades/", apis.BoxUpgradeListApi.as_view(), name="box-upgrades"),
    path("boxes/<str:box_id>/upgrade-now", apis.BoxUpgradeNowApi.as_view(), name="box-upgrade-now"),
    path("upgrades/<str:upgrade_id>/postpone", apis.UpgradePostponeApi.as_view(), name="upgrade-postpone"),
    path(
        "agent/firmware/<str:release_id>/image",
        apis.AgentFirmwareImageApi.as_view(),
        name="agent-firmware-image",
    ),
]
