from django.db import models


class AlertRuleKind(models.TextChoices):
    BOX_OFFLINE = "box_offline", "Box offline for N minutes"
    WAN_DOWN = "wan_down", "A WAN down for N minutes"
    LOSS_ABOVE = "loss_above", "A WAN's loss above threshold % for N minutes"
    RTT_ABOVE = "rtt_above", "A WAN's RTT above threshold ms for N minutes"
    # Only boxes that report their free memory (stock OverTheBox boxes: ``BoxStatus.mem_free_kb``).
    MEM_FREE_BELOW = "mem_free_below", "A box's free memory below threshold MiB for N minutes"


THRESHOLD_KINDS = (AlertRuleKind.LOSS_ABOVE, AlertRuleKind.RTT_ABOVE, AlertRuleKind.MEM_FREE_BELOW)


class AlertState(models.TextChoices):
    """pending (condition holds, not yet for N minutes) -> firing -> resolved. A pending alert whose
    condition clears is deleted: it never existed for anyone."""

    PENDING = "pending", "Pending"
    FIRING = "firing", "Firing"
    RESOLVED = "resolved", "Resolved"


OPEN_ALERT_STATES = (AlertState.PENDING, AlertState.FIRING)


class TargetKind(models.TextChoices):
    EMAIL = "email", "Email"
    WEBHOOK = "webhook", "Webhook"


class NotificationEvent(models.TextChoices):
    """What a delivery tells: an alert firing or resolved, or a notice of a box event (an event of
    ``fleet.core.events.NOTIFIED_KINDS``, such as a change of the box's public IP)."""

    FIRING = "firing", "Firing"
    RESOLVED = "resolved", "Resolved"
    NOTICE = "notice", "Notice"


class DeliveryState(models.TextChoices):
    PENDING = "pending", "Pending"
    SENT = "sent", "Sent"
    FAILED = "failed", "Failed"
