"""OpenWrt collector: Linux counters + ubus, mwan3 and ``ip mptcp`` state.

External commands go through a *runner* (``argv -> (returncode, stdout)``, raising
FileNotFoundError when the tool is missing) so tests replay recorded outputs.
"""

from __future__ import annotations

import ipaddress
import json
import re
import subprocess
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from .linux import LinuxCollector

Runner = Callable[[Sequence[str]], Tuple[int, str]]

UBUS_DUMP = ("ubus", "call", "network.interface", "dump")
MWAN3_STATUS = ("mwan3", "status")
MPTCP_ENDPOINTS = ("ip", "mptcp", "endpoint", "show")

_LTE_PROTOS = {"qmi", "ncm", "mbim", "3g", "modemmanager", "wwan"}
_NOT_WAN = {"loopback", "lan", "guest"}
_V6_PROTOS = {"dhcpv6", "6in4", "6to4", "6rd", "dslite"}  # IPv6 twins of a WAN, not a separate link


def subprocess_runner(argv: Sequence[str], timeout: float = 10.0) -> Tuple[int, str]:
    p = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, check=False)
    return p.returncode, p.stdout


def parse_ubus_dump(text: str) -> Dict[str, Dict[str, Any]]:
    """-> {logical name: {up, l3_device, device, proto, ipv4, default_route}}"""
    out: Dict[str, Dict[str, Any]] = {}
    try:
        data = json.loads(text)
    except ValueError:
        return out
    for itf in data.get("interface") or []:
        name = itf.get("interface")
        if not name:
            continue
        addrs = [a.get("address") for a in itf.get("ipv4-address") or [] if a.get("address")]
        default_targets = ("0.0.0.0", "::")  # noqa: S104 - route targets, not a bind address
        default = any(
            r.get("target") in default_targets and r.get("mask") == 0 for r in itf.get("route") or []
        )
        out[name] = {
            "up": bool(itf.get("up")),
            "l3_device": itf.get("l3_device") or itf.get("device"),
            "device": itf.get("device"),
            "proto": itf.get("proto"),
            "ipv4": addrs[0] if addrs else None,
            "default_route": default,
        }
    return out


_MWAN3_LINE = re.compile(r"^\s*interface (\S+) is (\w+)(.*?)(?:and tracking is (\w+))?\s*$")


def parse_mwan3_status(text: str) -> Dict[str, Dict[str, Any]]:
    """'Interface status:' section -> {name: {status: online|offline|disabled|..., tracking}}"""
    out: Dict[str, Dict[str, Any]] = {}
    in_section = False
    for line in text.splitlines():
        if line.startswith("Interface status:"):
            in_section = True
            continue
        if in_section:
            if not line.strip():
                break
            m = _MWAN3_LINE.match(line)
            if m:
                out[m.group(1)] = {"status": m.group(2), "tracking": m.group(4)}
    return out


def parse_mptcp_endpoints(text: str) -> List[Dict[str, Any]]:
    """``ip mptcp endpoint show`` -> [{address, id, flags, dev}]"""
    out = []
    for line in text.splitlines():
        parts = line.split()
        if not parts:
            continue
        ep: Dict[str, Any] = {"address": parts[0], "id": None, "flags": [], "dev": None, "port": None}
        i = 1
        while i < len(parts):
            tok = parts[i]
            if tok in ("id", "dev", "port") and i + 1 < len(parts):
                ep[tok] = (
                    int(parts[i + 1]) if tok in ("id", "port") and parts[i + 1].isdigit() else parts[i + 1]
                )
                i += 2
                continue
            ep["flags"].append(tok)
            i += 1
        out.append(ep)
    return out


_NON_PUBLIC = [
    ipaddress.ip_network(n)
    for n in (
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "100.64.0.0/10",  # CGNAT (typical on 4G/5G)
        "127.0.0.0/8",
        "169.254.0.0/16",
        "0.0.0.0/8",
        "fc00::/7",
        "fe80::/10",
        "::1/128",
    )
]


def public_or_none(addr: Optional[str]) -> Optional[str]:
    if not addr:
        return None
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        return None
    if any(ip in net for net in _NON_PUBLIC if net.version == ip.version):
        return None
    return addr


class OpenWrtCollector(LinuxCollector):
    name = "openwrt"

    def __init__(self, *, runner: Optional[Runner] = None, **linux_options: Any) -> None:
        """``linux_options`` are :class:`LinuxCollector`'s; ``runner`` runs ubus, mwan3 and ip."""
        super().__init__(**linux_options)
        self.runner: Runner = runner or subprocess_runner
        self.ifaces: Dict[str, Dict[str, Any]] = {}
        self.mwan3: Dict[str, Dict[str, Any]] = {}
        self.endpoints: List[Dict[str, Any]] = []
        self.missing_tools: List[str] = []

    def _run(self, argv: Sequence[str]) -> Optional[str]:
        try:
            rc, out = self.runner(argv)
        except FileNotFoundError:
            if argv[0] not in self.missing_tools:
                self.missing_tools.append(argv[0])
            return None
        except (OSError, subprocess.SubprocessError):
            return None
        return out if rc == 0 else None

    def refresh(self) -> None:
        text = self._run(UBUS_DUMP)
        self.ifaces = parse_ubus_dump(text) if text else {}
        text = self._run(MWAN3_STATUS)
        self.mwan3 = parse_mwan3_status(text) if text else {}
        text = self._run(MPTCP_ENDPOINTS)
        self.endpoints = parse_mptcp_endpoints(text) if text else []

    def wans(self) -> List[Dict[str, Any]]:
        configured = super().wans()
        if configured:
            return configured
        # Auto-detect: interfaces tracked by mwan3, else those holding a default route.
        names = [n for n in self.mwan3 if n in self.ifaces] or [
            n for n, i in self.ifaces.items() if i["default_route"] and n not in _NOT_WAN
        ]
        names = [n for n in names if self.ifaces[n].get("proto") not in _V6_PROTOS]
        out = []
        for n in names[:16]:
            proto = self.ifaces.get(n, {}).get("proto")
            out.append({"name": n, "label": n, "kind": "lte" if proto in _LTE_PROTOS else "other"})
        return out

    def wan_device(self, wan: Dict[str, Any]) -> str:
        itf = self.ifaces.get(wan["name"])
        if itf and itf.get("l3_device"):
            return itf["l3_device"]
        return wan["name"]

    def wan_extra(self, wan: Dict[str, Any], dev: str) -> Dict[str, Any]:
        itf = self.ifaces.get(wan["name"])
        extra: Dict[str, Any] = {}
        if itf is not None:
            up = itf["up"]
            m = self.mwan3.get(wan["name"])
            if m is not None and m["status"] in ("online", "offline", "disabled"):
                up = up and m["status"] == "online"
            extra["up"] = bool(up)
            extra["public_ip"] = public_or_none(itf.get("ipv4"))
        up = extra.get("up", self.link_up(dev))
        extra["subflows"] = (
            sum(1 for ep in self.endpoints if ep.get("dev") == dev and "subflow" in ep["flags"]) if up else 0
        )
        return extra
