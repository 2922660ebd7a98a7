from django.db import models


class CommandKind(models.TextChoices):
    REBOOT = "reboot", "Reboot"
    RESTART_SERVICES = "restart_services", "Restart services"
    DIAGNOSTICS = "diagnostics", "Diagnostics"
    SPEED_TEST = "speed_test", "Speed test"
    REFRESH_CONFIG = "refresh_config", "Refresh configuration"
    FIRMWARE_UPGRADE = "firmware_upgrade", "Firmware upgrade"


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
