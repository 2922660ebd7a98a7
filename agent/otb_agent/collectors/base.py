"""The collector interface, and the WAN list a collector monitors (from the config or ``--wan``)."""

from __future__ import annotations

from typing import Any, Dict, List, Optional

from otb_protocol import WAN_KIND_OTHER, WAN_KINDS, WAN_ROLE_DISABLED, WAN_ROLE_PRIMARY


class Collector:
    """Interface shared by all collectors."""

    #: True when collect() may block (subprocesses, probes): the agent runs it in a thread.
    blocking = False
    name = "base"
    #: The tunnel interface, when known (diagnostics look at it).
    tunnel_iface: Optional[str] = None

    def configure(self, config: Dict[str, Any]) -> None:
        """Apply the server config (wan_policy interfaces, tunnel settings)."""

    def collect(self) -> Dict[str, Any]:
        raise NotImplementedError

    def uptime_s(self) -> int:
        return 0

    def boot_id(self) -> str:
        return "unknown"

    def firmware_version(self) -> str:
        return "unknown"

    def model(self) -> str:
        return "unknown"


def wans_from_config(config: Optional[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """[{name, kind, label, role}] from config.wan_policy.interfaces (disabled ones skipped)."""
    out: List[Dict[str, Any]] = []
    if not isinstance(config, dict):
        return out
    policy = config.get("wan_policy") or {}
    for itf in policy.get("interfaces") or []:
        if not isinstance(itf, dict) or not itf.get("name"):
            continue
        if itf.get("role") == WAN_ROLE_DISABLED:
            continue
        out.append(
            {
                "name": str(itf["name"])[:32],
                "kind": _kind(itf.get("kind")),
                "label": str(itf.get("label") or itf["name"])[:64],
                "role": itf.get("role") or WAN_ROLE_PRIMARY,
            }
        )
    return out[:16]


def parse_wan_arg(text: str) -> Dict[str, Any]:
    """--wan IFACE[:KIND[:LABEL]]"""
    parts = text.split(":", 2)
    return {
        "name": parts[0],
        "kind": _kind(parts[1] if len(parts) > 1 else None),
        "label": parts[2] if len(parts) > 2 else parts[0],
        "role": WAN_ROLE_PRIMARY,
    }


def _kind(value: Any) -> str:
    return value if value in WAN_KINDS else WAN_KIND_OTHER
