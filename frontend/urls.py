"""Pages: the customer portal at the root, the support console under /console/."""

from django.urls import path

from frontend.views import accounts, backups, box, console, organization, portal, releases, remote_access

app_name = "frontend"
urlpatterns = [
    path("", accounts.home, name="home"),
    # accounts
    path("accounts/login/", accounts.login, name="login"),
    path("accounts/logout/", accounts.logout, name="logout"),
    path("accounts/password-reset/", accounts.password_reset, name="password_reset"),
    path("accounts/password-reset/sent/", accounts.password_reset_done, name="password_reset_done"),
    path("accounts/reset/<uidb64>/<token>/", accounts.password_reset_confirm, name="password_reset_confirm"),
    path("accounts/reset/done/", accounts.password_reset_complete, name="password_reset_complete"),
    path("organization/switch/", accounts.organization_switch, name="organization_switch"),
    path("invitations/accept", accounts.invitation_accept_page, name="invitation_accept"),
    # fleet and boxes
    path("boxes/", portal.fleet_page, name="boxes"),
    path("boxes/claim/", portal.box_claim_page, name="box_claim"),
    path("boxes/<uuid:box_id>/", box.box_page, name="box"),
    path("boxes/<uuid:box_id>/status/", box.box_status_fragment, name="box_status"),
    path("boxes/<uuid:box_id>/config-state/", box.box_config_fragment, name="box_config"),
    path("boxes/<uuid:box_id>/events/", box.box_events_fragment, name="box_events"),
    path("boxes/<uuid:box_id>/commands/", box.box_commands_fragment, name="box_commands"),
    path("boxes/<uuid:box_id>/commands/new/", box.box_command_create, name="box_command"),
    path("boxes/<uuid:box_id>/policy/", box.box_policy_update, name="box_policy"),
    path("boxes/<uuid:box_id>/remote-access/", remote_access.remote_access_ask, name="box_remote_access"),
    path(
        "boxes/<uuid:box_id>/remote-access/<uuid:remote_access_id>/<slug:action>/",
        remote_access.remote_access_action,
        name="box_remote_access_action",
    ),
    path("boxes/<uuid:box_id>/backups/diff/", backups.backup_diff_page, name="box_backup_diff"),
    path("boxes/<uuid:box_id>/backups/<uuid:backup_id>/", backups.backup_page, name="box_backup"),
    path(
        "boxes/<uuid:box_id>/backups/<uuid:backup_id>/archive/",
        backups.backup_archive,
        name="box_backup_archive",
    ),
    path(
        "boxes/<uuid:box_id>/backups/<uuid:backup_id>/<slug:action>/",
        backups.backup_action,
        name="box_backup_action",
    ),
    path("boxes/<uuid:box_id>/rename/", box.box_rename, name="box_rename"),
    path("boxes/<uuid:box_id>/firmware/", box.box_firmware_settings, name="box_firmware_settings"),
    path("boxes/<uuid:box_id>/firmware/<slug:action>/", box.box_firmware_action, name="box_firmware_action"),
    # organisation
    path("members/", organization.members_page, name="members"),
    path("members/<uuid:membership_id>/role/", organization.member_role_update, name="member_role"),
    path("members/<uuid:membership_id>/remove/", organization.member_delete, name="member_remove"),
    path(
        "members/invitations/<uuid:invitation_id>/<slug:action>/",
        organization.invitation_action,
        name="invitation_action",
    ),
    path("tokens/", organization.tokens_page, name="tokens"),
    path("tokens/<uuid:token_id>/revoke/", organization.token_revoke, name="token_revoke"),
    path("alerts/", organization.alerts_page, name="alerts"),
    path("alerts/rule/<uuid:rule_id>/", organization.alert_rule_edit, name="alert_rule"),
    path(
        "alerts/<slug:kind>/<uuid:object_id>/<slug:action>/",
        organization.alert_object_action,
        name="alert_action",
    ),
    # support console
    path("console/", console.console_home, name="console"),
    path("console/search/", console.console_search, name="console_search"),
    path("console/boxes/<uuid:box_id>/", console.console_box, name="console_box"),
    path("console/boxes/<uuid:box_id>/<slug:action>/", console.console_box_action, name="console_box_action"),
    path("console/rollouts/", console.rollout_list, name="rollouts"),
    path("console/rollouts/new/", console.rollout_new, name="rollout_new"),
    path("console/rollouts/<uuid:rollout_id>/", console.rollout_detail, name="rollout"),
    path("console/rollouts/<uuid:rollout_id>/<slug:action>/", console.rollout_action, name="rollout_action"),
    path("console/releases/", releases.release_list, name="releases"),
    path("console/releases/<uuid:release_id>/", releases.release_detail, name="release"),
    path("console/releases/<uuid:release_id>/<slug:action>/", releases.release_action, name="release_action"),
    path("console/audit/", console.console_audit, name="audit"),
    path("console/otb-devices/", console.console_otb_devices, name="otb_devices"),
]
