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
