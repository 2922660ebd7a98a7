"""The /1.0 routes, exactly as the box writes them: no trailing slashes, so no redirects."""

from django.urls import path

from otbcompat import backup_views, remote_access_views, telemetry_views, views

app_name = "otbcompat"

urlpatterns = [
    path("subscribe", views.subscribe, name="subscribe"),
    path("renew_jwt", views.renew_jwt, name="renew-jwt"),
    path("devices/<str:device_id>/actions/todo", views.actions_todo, name="actions-todo"),
    path("devices/<str:device_id>/service/associated", views.associated, name="service-associated"),
    path("devices/<str:device_id>/service/<str:service_id>/confirm", views.confirm, name="service-confirm"),
    path("devices/<str:device_id>/config", views.config, name="config"),
    path("devices/<str:device_id>/service/<str:service_id>/backups", backup_views.backups, name="backups"),
    path(
        "devices/<str:device_id>/service/<str:service_id>/backups/<str:backup_id>",
        backup_views.backup,
        name="backup",
    ),
    path("backup_archives/<str:token>", backup_views.backup_archive, name="backup-archive"),
    # Telemetry (docs/otb-protocol.md, "Telemetry").
    path("devices/<str:device_id>/events", telemetry_views.events, name="events"),
    path("devices/<str:device_id>/properties", telemetry_views.properties, name="properties"),
    path("devices/<str:device_id>/service/<str:service_id>/metrics", telemetry_views.metrics, name="metrics"),
    path("devices/<str:device_id>/diagnostics", telemetry_views.diagnostics, name="diagnostics"),
    path(
        "devices/<str:device_id>/diagnostics/<str:diagnostic_id>",
        telemetry_views.diagnostic_item,
        name="diagnostic-item",
    ),
    path(
        "devices/<str:device_id>/remote_accesses/<str:remote_access_id>/keys",
        remote_access_views.remote_access_keys,
        name="remote-access-keys",
    ),
    path("devices/<str:device_id>/actions/<str:action_id>", views.action_report, name="action-report"),
]
