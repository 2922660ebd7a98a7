"""A box's port forwards, validated: a pure module (no database), shared by the service that stores
them and the forms that edit them.

A forward sends connections that reach the box's dedicated public IPv4 on ``port`` (TCP or UDP) to
``to_address:to_port`` on the customer's LAN. The box applies them (nftables DNAT on its tunnel
interface); the aggregation server routes the public address to the box. ``to_address`` must be a
private IPv4 address (RFC 1918): a forward to anywhere else would make the box a relay."""

from __future__ import annotations

import ipaddress
from typing import Any

from fleet.core.errors import InvalidInput

PORT_FORWARDS_MAX = 64
PORT_FORWARD_PROTOCOLS = ("tcp", "udp")
_PRIVATE = [ipaddress.ip_network(net) for net in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16")]
_ALLOWED = {"proto", "port", "to_address", "to_port", "description"}


def _port_clean(value: Any, *, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise InvalidInput("a port is a whole number from 1 to 65535", field=field)
    return value


def port_forwards_validate(forwards: Any) -> list[dict[str, Any]]:
    """The normalised list of forwards, or InvalidInput naming the offending field
    (``port_forwards[1].to_address``)."""
    if not isinstance(forwards, list):
        raise InvalidInput("port_forwards is a list of objects", field="port_forwards")
    if len(forwards) > PORT_FORWARDS_MAX:
        raise InvalidInput(f"at most {PORT_FORWARDS_MAX} port forwards", field="port_forwards")
    cleaned: list[dict[str, Any]] = []
    seen: set[tuple[str, int]] = set()
    for index, item in enumerate(forwards):
        where = f"port_forwards[{index}]"
        if not isinstance(item, dict):
            raise InvalidInput("a port forward is an object", field=where)
        unknown = sorted(str(key) for key in item if key not in _ALLOWED)
        if unknown:
            raise InvalidInput(f"unknown field: {unknown[0]}", field=f"{where}.{unknown[0]}")
        proto = item.get("proto", "tcp")
        if proto not in PORT_FORWARD_PROTOCOLS:
            raise InvalidInput("proto is tcp or udp", field=f"{where}.proto")
        port = _port_clean(item.get("port"), field=f"{where}.port")
        if (proto, port) in seen:
            raise InvalidInput(f"{proto} port {port} is forwarded twice", field=f"{where}.port")
        seen.add((proto, port))
        address = item.get("to_address")
        try:
            parsed = ipaddress.IPv4Address(address) if isinstance(address, str) else None
        except ValueError:
            parsed = None
        if parsed is None or not any(parsed in net for net in _PRIVATE):
            raise InvalidInput(
                "to_address is a private IPv4 address of the LAN (10/8, 172.16/12 or 192.168/16)",
                field=f"{where}.to_address",
            )
        to_port = _port_clean(item.get("to_port", port), field=f"{where}.to_port")
        description = item.get("description", "")
        if not isinstance(description, str) or len(description) > 100 or not description.isprintable():
            raise InvalidInput(
                "description is printable text of at most 100 characters", field=f"{where}.description"
            )
        entry: dict[str, Any] = {"proto": proto, "port": port, "to_address": str(parsed), "to_port": to_port}
        if description:
            entry["description"] = description
        cleaned.append(entry)
    return sorted(cleaned, key=lambda entry: (entry["proto"], entry["port"]))
