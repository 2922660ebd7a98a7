"""Peer entries as the backend's peers document carries them (GET /api/v1/servers/self/peers)."""

from __future__ import annotations

import base64
import hashlib
import uuid
from typing import Any


def key(seed: str) -> str:
    """A well-formed WireGuard key (32 bytes, base64) derived from ``seed``."""
    return base64.b64encode(hashlib.sha256(seed.encode()).digest()).decode()


def box_id(n: int) -> str:
    return str(uuid.UUID(int=0xB0C5 << 96 | n))


def peer(n: int, **changes: Any) -> dict[str, Any]:
    """Box ``n`` (0..126): port 51820+n, tunnel 100.64.0.2n/31, public 203.0.113.(10+n), IPv6
    2001:db8:n::/56, shadowsocks, no rate limit."""
    entry: dict[str, Any] = {
        "box_id": box_id(n),
        "serial": f"BOX-{n:04d}",
        "wg_public_key": key(f"box-{n}"),
        "wg_preshared_key": key(f"psk-{n}"),
        "tunnel_port": 51820 + n,
        "public_ipv4": f"203.0.113.{10 + n}",
        "tunnel": {
            "box_address": f"100.64.0.{2 * n + 1}",
            "server_address": f"100.64.0.{2 * n}",
            "prefix": f"100.64.0.{2 * n}/31",
        },
        "ipv6_prefix": f"2001:db8:{n:x}::/56",
        "glorytun_key": None,
        "shadowsocks": {"password": f"secret-{n}", "method": "chacha20-ietf-poly1305"},
        "wan_mode": "aggregate",
        "interfaces": [{"name": "wan1", "role": "primary", "download_kbps": None, "upload_kbps": None}],
        "rate_limit": None,
    }
    entry.update(changes)
    return entry


def document(*peers: dict[str, Any]) -> dict[str, Any]:
    return {"server": "agg-1", "etag": "x", "count": len(peers), "peers": list(peers)}
