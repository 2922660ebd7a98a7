import otb_protocol
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


class BoxProtocol(models.TextChoices):
    """How a box talks to us: our own agent over the websocket, or the stock OverTheBox firmware's
    polled /1.0 protocol (otbcompat)."""

    AGENT = "agent", "otb-agent"
    OTB = "otb", "OverTheBox firmware"


# The WAN values are the protocol's (otb_protocol, shared with the agent); the labels are ours.
class WanMode(models.TextChoices):
    AGGREGATE = otb_protocol.WAN_MODE_AGGREGATE, "Aggregate (MPTCP over all links)"
    LOAD_BALANCE = otb_protocol.WAN_MODE_LOAD_BALANCE, "Load balance"
    FAILOVER = otb_protocol.WAN_MODE_FAILOVER, "Failover"


class WanRole(models.TextChoices):
    PRIMARY = otb_protocol.WAN_ROLE_PRIMARY, "Primary"
    BACKUP = otb_protocol.WAN_ROLE_BACKUP, "Backup"
    DISABLED = otb_protocol.WAN_ROLE_DISABLED, "Disabled"


class WanKind(models.TextChoices):
    FIBER = otb_protocol.WAN_KIND_FIBER, "Fiber"
    VDSL = otb_protocol.WAN_KIND_VDSL, "VDSL"
    ADSL = otb_protocol.WAN_KIND_ADSL, "ADSL"
    SDSL = otb_protocol.WAN_KIND_SDSL, "SDSL"
    CABLE = otb_protocol.WAN_KIND_CABLE, "Cable"
    LTE = otb_protocol.WAN_KIND_LTE, "4G/LTE"
    NR = otb_protocol.WAN_KIND_5G, "5G"
    SATELLITE = otb_protocol.WAN_KIND_SATELLITE, "Satellite"
    OTHER = otb_protocol.WAN_KIND_OTHER, "Other"


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
    PUBLIC_IP_CHANGED = "public_ip_changed", "Public IP changed"
    # Reported by stock OverTheBox boxes (/1.0 events, otbcompat): boot, daemon start, netifd
    # interface hotplug of interfaces that are not WAN links (a WAN's are wan_up / wan_down), and any
    # other event name, kept as it came.
    BOX_BOOTED = "box_booted", "Box booted"
    BOX_STARTED = "box_started", "Box daemon started"
    IFACE_UP = "iface_up", "Interface up"
    IFACE_DOWN = "iface_down", "Interface down"
    IFACE_UPDATED = "iface_updated", "Interface updated"
    BOX_REPORTED = "box_reported", "Box reported an event"
