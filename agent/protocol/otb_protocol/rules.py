"""Rules on field values that the server and the agent both apply, written once.

The server checks them when a person sets something (a box's serial at import, its WAN policy, a
command's params); the agent checks them before acting on what it receives, or before sending
what the server would refuse. The display labels of these values belong to the server.
"""

from __future__ import annotations

import re
from typing import Any, Optional

# -- box serials ----------------------------------------------------------------------------------

SERIAL_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")


def serial_problem(serial: Any) -> Optional[str]:
    """Why ``serial`` cannot be a box serial, or None if it can be."""
    if not isinstance(serial, str) or not SERIAL_RE.fullmatch(serial):
        return "must be 1 to 64 characters from A-Z a-z 0-9 . _ -"
    return None


# -- network interface names ----------------------------------------------------------------------

# Linux's limit on an interface name, with its NUL.
IFNAMSIZ = 16


def interface_name_problem(name: Any) -> Optional[str]:
    """Why ``name`` cannot be a Linux interface name (the kernel's rules), or None if it can be.

    Command params naming an interface (``speed_test.iface``) are checked with it by the server,
    when the command is created, and by the agent, before it binds a socket to the interface.
    """
    if not isinstance(name, str) or not name:
        return "must be a network interface name"
    if len(name.encode("utf-8")) >= IFNAMSIZ:
        return f"must be a network interface name of at most {IFNAMSIZ - 1} bytes"
    if name in (".", "..") or any(c in "/:\0" or c.isspace() for c in name):
        return f"is not a valid network interface name: {name!r}"
    return None


# The names a WAN policy may give a box's interfaces: a narrower alphabet than the kernel's (the
# names go into uci and shell commands on the box), and always a valid kernel name, so that a
# speed test can be run through any WAN of the policy.
WAN_INTERFACE_NAME_RE = re.compile(r"(?!\.\.?$)[a-z0-9._-]{1,15}")

# -- WAN policy -----------------------------------------------------------------------------------

WAN_KIND_FIBER = "fiber"
WAN_KIND_VDSL = "vdsl"
WAN_KIND_ADSL = "adsl"
WAN_KIND_SDSL = "sdsl"
WAN_KIND_CABLE = "cable"
WAN_KIND_LTE = "lte"
WAN_KIND_5G = "5g"
WAN_KIND_SATELLITE = "satellite"
WAN_KIND_OTHER = "other"
WAN_KINDS = (
    WAN_KIND_FIBER,
    WAN_KIND_VDSL,
    WAN_KIND_ADSL,
    WAN_KIND_SDSL,
    WAN_KIND_CABLE,
    WAN_KIND_LTE,
    WAN_KIND_5G,
    WAN_KIND_SATELLITE,
    WAN_KIND_OTHER,
)

WAN_MODE_AGGREGATE = "aggregate"
WAN_MODE_LOAD_BALANCE = "load-balance"
WAN_MODE_FAILOVER = "failover"
WAN_MODES = (WAN_MODE_AGGREGATE, WAN_MODE_LOAD_BALANCE, WAN_MODE_FAILOVER)

WAN_ROLE_PRIMARY = "primary"
WAN_ROLE_BACKUP = "backup"
WAN_ROLE_DISABLED = "disabled"  # configured but not used, and not monitored by the agent
WAN_ROLES = (WAN_ROLE_PRIMARY, WAN_ROLE_BACKUP, WAN_ROLE_DISABLED)

# -- commands -------------------------------------------------------------------------------------

COMMAND_KINDS = (
    "reboot",
    "restart_services",
    "diagnostics",
    "speed_test",
    "refresh_config",
    "firmware_upgrade",
    "backup",
    "restore",
)

# ``diagnostics.checks`` selects a subset of these (all by default).
DIAGNOSTIC_CHECKS = ("interfaces", "routes", "dns", "ping", "mptcp", "tunnel", "traceroute")

SPEED_TEST_DIRECTIONS = ("download", "upload", "both")
SPEED_TEST_DEFAULT_BYTES = 10_000_000
SPEED_TEST_MAX_BYTES = 100_000_000
