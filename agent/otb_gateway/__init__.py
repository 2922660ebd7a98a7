"""otb-gateway: the software of an aggregation server (stdlib only; never imports the server).

It pulls the server's peers document from the backend, converges the host to it (one Shadowsocks
server per box, one WireGuard interface for every box, NAT to each box's public IPv4, rate limits)
and reports its health and per-box counters. docs/gateway.md describes what it configures and why.
"""

__version__ = "0.1.0"
