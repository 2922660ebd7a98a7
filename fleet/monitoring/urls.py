from django.urls import path

from fleet.monitoring import apis

urlpatterns = [
    path("boxes/<str:box_id>/events/", apis.BoxEventListApi.as_view(), name="box-events"),
    path("organizations/<str:org_id>/events/", apis.OrganizationEventListApi.as_view(), name="org-events"),
    path("organizations/<str:org_id>/alert-rules/", apis.AlertRuleListApi.as_view(), name="org-alert-rules"),
    path(
        "organizations/<str:org_id>/alert-rules/<str:rule_id>/",
        apis.AlertRuleDetailApi.as_view(),
        name="org-alert-rule",
    ),
    path(
        "organizations/<str:org_id>/notification-targets/",
        apis.NotificationTargetListApi.as_view(),
        name="org-notification-targets",
    ),
    path(
        "organizations/<str:org_id>/notification-targets/<str:target_id>/",
        apis.NotificationTargetDetailApi.as_view(),
        name="org-notification-target",
    ),
    path("organizations/<str:org_id>/alerts/", apis.AlertListApi.as_view(), name="org-alerts"),
    path(
        "notification-deliveries/", apis.NotificationDeliveryListApi.as_view(), name="notification-deliveries"
    ),
]
