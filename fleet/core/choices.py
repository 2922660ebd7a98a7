from django.db import models


class Role(models.TextChoices):
    OWNER = "owner", "Owner"
    ADMIN = "admin", "Admin"
    VIEWER = "viewer", "Viewer"


class BoxState(models.TextChoices):
    """Lifecycle of a box: made and imported, bound to an organisation, or retired for good."""

    UNCLAIMED = "unclaimed", "Unclaimed"
    CLAIMED = "claimed", "Claimed"
    DECOMMISSIONED = "decommissioned", "Decommissioned"


class WanMode(models.TextChoices):
    AGGREGATE = "aggregate", "Aggregate (MPTCP over all links)"
    LOAD_BALANCE = "load-balance", "Load balance"
    FAILOVER = "failover", "Failover"


class WanRole(models.TextChoices):
    PRIMARY = "primary", "Primary"
    BACKUP = "backup", "Backup"
    DISABLED = "disabled", "Disabled"


class WanKind(models.TextChoices):
    FIBER = "fiber", "Fiber"
    VDSL = "vdsl", "VDSL"
    ADSL = "adsl", "ADSL"
    SDSL = "sdsl", "SDSL"
    CABLE = "cable", "Cable"
    LTE = "lte", "4G/LTE"
    NR = "5g", "5G"
    SATELLITE = "satellite", "Satellite"
    OTHER = "other", "Other"


class ReleaseChannel(models.TextChoices):
    STABLE = "stable", "Stable"
    BETA = "beta", "Beta"
    DEV = "dev", "Dev"


class EventKind(models.TextChoices):
    """What happened on a box's timeline (``fleet.core.events``)."""

    SESSION_OPENED = "session_opened", "Session opened"
    SESSION_CLOSED = "session_closed", "Session closed"
    BOX_ONLINE = "box_online", "Box online"
    BOX_OFFLINE = "box_offline", "Box offline"
    WAN_UP = "wan_up", "WAN up"
    WAN_DOWN = "wan_down", "WAN down"
    CONFIG_APPLIED = "config_applied", "Configuration applied"
    CONFIG_FAILED = "config_failed", "Configuration failed"
    FIRMWARE_CHANGED = "firmware_changed", "Firmware changed"
    COMMAND_FINISHED = "command_finished", "Command finished"
    ALERT_FIRING = "alert_firing", "Alert firing"
    ALERT_RESOLVED = "alert_resolved", "Alert resolved"
