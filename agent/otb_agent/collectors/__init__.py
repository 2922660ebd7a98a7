"""Telemetry collectors. Each has ``collect() -> sample dict`` (see the protocol schema)."""

from __future__ import annotations

from typing import Any, Dict, List, Optional

from .base import Collector, parse_wan_arg, wans_from_config
from .linux import LinuxCollector
from .openwrt import OpenWrtCollector
from .probe import PingProbe
from .simulated import SimulatedCollector

__all__ = ["Collector", "make_collector", "parse_wan_arg", "wans_from_config"]


def make_collector(
    name: str,
    *,
    serial: Optional[str] = None,
    wans: Optional[List[Dict[str, Any]]] = None,
    probe: Optional[PingProbe] = None,
    tunnel_iface: Optional[str] = None,
) -> Collector:
    """The collector called ``name`` (``linux``, ``openwrt`` or ``simulated``, seeded by ``serial``)."""
    if name == "simulated":
        return SimulatedCollector(serial or "SIM")
    if name == "linux":
        return LinuxCollector(wans=wans, probe=probe, tunnel_iface=tunnel_iface)
    if name == "openwrt":
        return OpenWrtCollector(wans=wans, probe=probe, tunnel_iface=tunnel_iface)
    raise ValueError(f"unknown collector {name!r}")
