"""Address arithmetic for pools: the prefix at an index, the two ends of a tunnel prefix.

Pure functions over ``ipaddress``; no database access.
"""

from __future__ import annotations

import ipaddress

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def prefix_at(cidr: str, prefix_length: int, index: int) -> str:
    """The ``index``-th prefix of length ``prefix_length`` inside ``cidr`` (index 0 is the first)."""
    network = ipaddress.ip_network(cidr)
    step = 1 << (network.max_prefixlen - prefix_length)
    address = network.network_address + index * step
    return str(ipaddress.ip_network(f"{address}/{prefix_length}"))


def tunnel_ends(prefix: str) -> tuple[str, str]:
    """(server address, box address) of a tunnel prefix: the first and second address of a /31 or
    /127; the first and second usable host of anything wider."""
    network = ipaddress.ip_network(prefix)
    if network.num_addresses <= 2:
        return str(network.network_address), str(network.network_address + 1)
    return str(network.network_address + 1), str(network.network_address + 2)


def host_address(prefix: str) -> str:
    """The address of a single-address prefix ("203.0.113.7/32" -> "203.0.113.7")."""
    return str(ipaddress.ip_network(prefix).network_address)
