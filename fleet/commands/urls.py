from django.urls import path

from fleet.commands import apis, backup_apis, remote_access_apis

urlpatterns = [
    path("agent/speedtest", apis.AgentSpeedtestApi.as_view(), name="agent-speedtest"),
    path("boxes/<str:box_id>/commands/", apis.BoxCommandListApi.as_view(), name="box-commands"),
    path("commands/<str:command_id>/", apis.CommandDetailApi.as_view(), name="command-detail"),
    path("commands/<str:command_id>/cancel", apis.CommandCancelApi.as_view(), name="command-cancel"),
    path("agent/backups", backup_apis.AgentBackupListApi.as_view(), name="agent-backups"),
    path("agent/backups/<str:backup_id>", backup_apis.AgentBackupDetailApi.as_view(), name="agent-backup"),
    path("boxes/<str:box_id>/backups/", backup_apis.BoxBackupListApi.as_view(), name="box-backups"),
    path("boxes/<str:box_id>/backups/diff", backup_apis.BoxBackupDiffApi.as_view(), name="box-backup-diff"),
    path(
        "boxes/<str:box_id>/backups/<str:backup_id>/",
        backup_apis.BoxBackupDetailApi.as_view(),
        name="box-backup",
    ),
    path(
        "boxes/<str:box_id>/backups/<str:backup_id>/file",
        backup_apis.BoxBackupFileApi.as_view(),
        name="box-backup-file",
    ),
    path(
        "boxes/<str:box_id>/backups/<str:backup_id>/archive",
        backup_apis.BoxBackupArchiveApi.as_view(),
        name="box-backup-archive",
    ),
    path(
        "remote-accesses/open",
        remote_access_apis.OpenRemoteAccessListApi.as_view(),
        name="remote-accesses-open",
    ),
    path(
        "boxes/<str:box_id>/remote-accesses/",
        remote_access_apis.BoxRemoteAccessListApi.as_view(),
        name="box-remote-accesses",
    ),
    path(
        "boxes/<str:box_id>/remote-accesses/<str:remote_access_id>/",
        remote_access_apis.BoxRemoteAccessDetailApi.as_view(),
        name="box-remote-access",
    ),
    path(
        "boxes/<str:box_id>/remote-accesses/<str:remote_access_id>/<str:action>",
        remote_access_apis.BoxRemoteAccessActionApi.as_view(),
        name="box-remote-access-action",
    ),
    path(
        "boxes/<str:box_id>/backups/<str:backup_id>/restore",
        backup_apis.BoxBackupRestoreApi.as_view(),
        name="box-backup-restore",
    ),
]
