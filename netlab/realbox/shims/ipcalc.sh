#!/usr/bin/env python3
"""OpenWrt's ipcalc.sh for one ``address/prefix``: IP, NETMASK, BROADCAST, NETWORK, PREFIX lines."""

import ipaddress
import sys

if len(sys.argv) < 2 or not sys.argv[1]:
    sys.exit(1)
spec = sys.argv[1] if "/" in sys.argv[1] else f"{sys.argv[1]}/{sys.argv[2] if len(sys.argv) > 2 else 32}"
iface = ipaddress.ip_interface(spec)
print(f"IP={iface.ip}")
print(f"NETMASK={iface.network.netmask}")
print(f"BROADCAST={iface.network.broadcast_address}")
print(f"NETWORK={iface.network.network_address}")
print(f"PREFIX={iface.network.prefixlen}")
