from django.db import models


class CommandKind(models.TextChoices):
    REBOOT = "reboot", "Reboot"
    RESTART_SERVICES = "restart_services", "Restart services"
    DIAGNOSTICS = "diagnostics", "Diagnostics"
    SPEED_TEST = "speed_test", "Speed test"
    REFRESH_CONFIG = "refresh_config", "Refresh configuration"
    FIRMWARE_UPGRADE = "firmware_upgrade", "Firmware upgrade"
    BACKUP = "backup", "Back up configuration"
    RESTORE = "restore", "Restore configuration"
    # Sent by a remote access (fleet.commands.remote_access), never by hand; stock OverTheBox boxes only.
    REMOTE_ACCESS_PREPARE = "remote_access_prepare", "Prepare remote access"
    REMOTE_ACCESS_CONNECT = "remote_access_connect", "Open remote access"
    REMOTE_ACCESS_DISCONNECT = "remote_access_disconnect", "Close remote access"
    # Stock OverTheBox boxes only (Box.protocol "otb"; otbcompat/actions.py maps every kind to its action).
    REFRESH_PROPERTIES = "refresh_properties", "Refresh properties"
    UPDATE_RELEASE_CHANNEL = "update_release_channel", "Update release channel"


class CommandState(models.TextChoices):
    """pending -> sent -> running -> succeeded | failed; expired and cancelled end it early."""

    PENDING = "pending", "Pending"
    SENT = "sent", "Sent"
    RUNNING = "running", "Running"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"
    EXPIRED = "expired", "Expired"
    CANCELLED = "cancelled", "Cancelled"


OPEN_STATES = (CommandState.PENDING, CommandState.SENT, CommandState.RUNNING)
DELIVERABLE_STATES = (CommandState.PENDING, CommandState.SENT)
FINISHED_STATES = (
    CommandState.SUCCEEDED,
    CommandState.FAILED,
    CommandState.EXPIRED,
    CommandState.CANCELLED,
)


class BackupSource(models.TextChoices):
    """Who uploaded a backup: a stock OverTheBox box (``/1.0``, one file per call) or ``otb-agent``."""

    OTB = "otb", "OverTheBox firmware"
    AGENT = "agent", "otb-agent"


# The commands of a remote access: created by its service only, understood by stock OverTheBox boxes
# (the agent protocol has no such command).
REMOTE_ACCESS_KINDS = (
    CommandKind.REMOTE_ACCESS_PREPARE,
    CommandKind.REMOTE_ACCESS_CONNECT,
    CommandKind.REMOTE_ACCESS_DISCONNECT,
)


class RemoteAccessState(models.TextChoices):
    """requested -> approved (the box is asked for its key) -> connected (the box is told to open the
    reverse SSH tunnel) -> closed | expired; a request may also be rejected, or expire unapproved."""

    REQUESTED = "requested", "Waiting for the owner's approval"
    APPROVED = "approved", "Approved, waiting for the box"
    CONNECTED = "connected", "Open"
    CLOSED = "closed", "Closed"
    EXPIRED = "expired", "Expired"
    REJECTED = "rejected", "Rejected"


OPEN_REMOTE_ACCESS_STATES = (RemoteAccessState.APPROVED, RemoteAccessState.CONNECTED)


# Kinds only stock OverTheBox boxes understand (the agent protocol has no such command).
OTB_ONLY_KINDS = (CommandKind.REFRESH_PROPERTIES, CommandKind.UPDATE_RELEASE_CHANNEL, *REMOTE_ACCESS_KINDS)
