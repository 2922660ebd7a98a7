from django.db import models


class ServerStatus(models.TextChoices):
    ACTIVE = "active", "Active"
    DRAINING = "draining", "Draining (no new boxes)"
    DOWN = "down", "Down"


class PoolPurpose(models.TextChoices):
    PUBLIC_IPV4 = "public_ipv4", "Public IPv4"
    TUNNEL_P2P = "tunnel_p2p", "Tunnel point-to-point"
    IPV6_PREFIX = "ipv6_prefix", "Delegated IPv6 prefix"


class AssignmentState(models.TextChoices):
    ACTIVE = "active", "Active"
    QUARANTINED = "quarantined", "Quarantined"


class TunnelKind(models.TextChoices):
    WIREGUARD = "wireguard", "WireGuard"
    GLORYTUN = "glorytun", "Glorytun-style"
    SHADOWSOCKS = "shadowsocks", "Shadowsocks-style"
