"""Telemetry collectors. Each has ``collect() -> sample dict`` (see the protocol schema)."""

from __future__ import annotations

from typing import Any

from .base import Collector, parse_wan_arg, wans_from_config
from .linux import LinuxCollector
from .openwrt import OpenWrtCollector
from .simulated import SimulatedCollector

__all__ = ["Collector", "make_collector", "parse_wan_arg", "wans_from_config"]


def make_collector(name: str, **kwargs: Any) -> Collector:
    if name == "simulated":
        return SimulatedCollector(kwargs.get("serial") or "SIM", flaky=kwargs.get("flaky", False))
    if name == "linux":
        return LinuxCollector(
            wans=kwargs.get("wans"), probe=kwargs.get("probe"), tunnel_iface=kwargs.get("tunnel_iface")
        )
    if name == "openwrt":
        return OpenWrtCollector(
            wans=kwargs.get("wans"), probe=kwargs.get("probe"), tunnel_iface=kwargs.get("tunnel_iface")
        )
    raise ValueError(f"unknown collector {name!r}")
