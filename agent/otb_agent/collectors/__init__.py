"""Telemetry collectors. Each has ``collect() -> sample dict`` (see the protocol schema)."""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional

from .base import Collector, parse_wan_arg, wans_from_config
from .probe import PingProbe

__all__ = ["Collector", "make_collector", "parse_wan_arg", "wans_from_config"]


def make_collector(
    name: str,
    *,
    serial: Optional[str] = None,
    wans: Optional[List[Dict[str, Any]]] = None,
    probe: Optional[PingProbe] = None,
    tunnel_iface: Optional[str] = None,
    proxy_alive: Optional[Callable[[], bool]] = None,
) -> Collector:
    """The collector called ``name`` (``linux``, ``openwrt`` or ``simulated``, seeded by ``serial``).
    ``proxy_alive`` (the Linux data plane's) makes the Linux collector report the tunnel itself."""
    # Only the collector asked for is imported: a box runs one of them, within the agent's memory
    # budget (bench/agent.py: <= 30 MiB).
    if name == "simulated":
        from .simulated import SimulatedCollector

        return SimulatedCollector(serial or "SIM")
    if name == "linux":
        from .linux import LinuxCollector

        return LinuxCollector(wans=wans, probe=probe, tunnel_iface=tunnel_iface, proxy_alive=proxy_alive)
    if name == "openwrt":
        from .openwrt import OpenWrtCollector

        return OpenWrtCollector(wans=wans, probe=probe, tunnel_iface=tunnel_iface)
    raise ValueError(f"unknown collector {name!r}")
