"""The WAN policy of a box, validated: a pure module (no database), shared by the services that store a
policy and the forms that edit one.

A policy is ``{"mode": aggregate|load-balance|failover, "interfaces": [{"name", "role", "kind",
"up_kbps"?, "down_kbps"?}, ...], "download_kbps"?, "upload_kbps"?}``; roles are primary, backup or
disabled. A link's ``up_kbps``/``down_kbps`` say what the link can carry; the box's own
``download_kbps``/``upload_kbps`` are the rate its aggregation server lets through for it (the
gateway polices the box's traffic to them); either is left out when not set."""

from __future__ import annotations

from typing import Any

from otb_protocol import WAN_INTERFACE_NAME_RE

from fleet.core.choices import WanKind, WanMode, WanRole
from fleet.core.errors import InvalidInput

WAN_MAX_INTERFACES = 16
WAN_MAX_KBPS = 10_000_000


def _kbps_clean(value: Any, *, field: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= WAN_MAX_KBPS:
        raise InvalidInput(f"Give a whole number of kbit/s from 1 to {WAN_MAX_KBPS}.", field=field)
    return value


def wan_policy_validate(
    *, mode: Any, interfaces: Any, download_kbps: Any = None, upload_kbps: Any = None
) -> dict[str, Any]:
    """The normalised WAN policy, or InvalidInput naming the offending field (``interfaces[2].name``)."""
    if mode not in WanMode.values:
        raise InvalidInput(f"Choose a mode: {', '.join(WanMode.values)}.", field="mode")
    if not isinstance(interfaces, list):
        raise InvalidInput("The links (interfaces) are a list of objects.", field="interfaces")
    if len(interfaces) > WAN_MAX_INTERFACES:
        raise InvalidInput(f"A policy names at most {WAN_MAX_INTERFACES} links.", field="interfaces")
    allowed = {"name", "role", "kind", "up_kbps", "down_kbps"}
    cleaned: list[dict[str, Any]] = []
    names: set[str] = set()
    for index, item in enumerate(interfaces):
        where = f"interfaces[{index}]"
        if not isinstance(item, dict):
            raise InvalidInput("Each link (interface) is an object.", field=where)
        unknown = sorted(str(key) for key in item if key not in allowed)
        if unknown:
            raise InvalidInput(f"A link has no setting named {unknown[0]!r}.", field=f"{where}.{unknown[0]}")
        name = item.get("name")
        if not isinstance(name, str) or not WAN_INTERFACE_NAME_RE.fullmatch(name):
            raise InvalidInput(
                "A link's interface name is 1 to 15 characters from a-z 0-9 . _ -.", field=f"{where}.name"
            )
        if name in names:
            raise InvalidInput(f"The link {name!r} is listed twice.", field=f"{where}.name")
        names.add(name)
        role = item.get("role", WanRole.PRIMARY.value)
        if role not in WanRole.values:
            raise InvalidInput(f"Choose a role: {', '.join(WanRole.values)}.", field=f"{where}.role")
        kind = item.get("kind", WanKind.OTHER.value)
        if kind not in WanKind.values:
            raise InvalidInput(f"Choose a kind of link: {', '.join(WanKind.values)}.", field=f"{where}.kind")
        entry: dict[str, Any] = {"name": name, "role": role, "kind": kind}
        for key in ("up_kbps", "down_kbps"):
            value = _kbps_clean(item.get(key), field=f"{where}.{key}")
            if value is not None:
                entry[key] = value
        cleaned.append(entry)
    roles = [entry["role"] for entry in cleaned]
    if mode == WanMode.FAILOVER and WanRole.PRIMARY not in roles:
        raise InvalidInput(
            "Failover needs at least one link set to Primary: the box uses the primary links and moves "
            "to the backup ones only when every primary link is down.",
            field="interfaces",
        )
    if mode != WanMode.FAILOVER and all(role == WanRole.DISABLED for role in roles):
        raise InvalidInput(
            f"{WanMode(mode).label} needs at least one link that is not disabled: set one to Primary.",
            field="interfaces",
        )
    policy: dict[str, Any] = {"mode": mode, "interfaces": cleaned}
    for key, value in (("download_kbps", download_kbps), ("upload_kbps", upload_kbps)):
        limit = _kbps_clean(value, field=key)
        if limit is not None:
            policy[key] = limit
    return policy
