"""What the host should look like for a peer list: pure (no I/O), so it is tested without root.

``build_plan(peers, ...)`` gives the host's state (sysctls, MPTCP limits, the WireGuard interface,
the fixed nftables table) and, per box, every piece that belongs to it and to nothing else: its
address on ``otbgw0``, its routes, its WireGuard peer, its ss-server configuration, and its nftables
elements and named objects (counters, rate limits). The converger (``converge``) compares this with
what the kernel holds, piece by piece, so a change to one box only ever touches that box's pieces.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
from dataclasses import dataclass, field
from typing import Dict, Iterable, Optional, Tuple

from .peers import Peer

WG_IFACE = "otbgw0"
WG_MTU = 1420
NFT_FAMILY = "inet"
NFT_TABLE = "otb_gateway"
# 8 = the most WAN links per box we support on the wire (each adds one MPTCP subflow).
MPTCP_SUBFLOWS = 8
MPTCP_ADD_ADDR_ACCEPTED = 0
SYSCTLS: Tuple[Tuple[str, str], ...] = (
    ("net.ipv4.ip_forward", "1"),
    ("net.ipv6.conf.all.forwarding", "1"),
    ("net.mptcp.enabled", "1"),
)
# ss-server closes a connection idle for this long (its default of 60 s would cut idle SSH sessions).
SS_TIMEOUT_S = 3600
# A policer lets a burst of this many milliseconds of traffic through at once (at least MIN_BURST).
BURST_MS = 100
MIN_BURST_BYTES = 16_000

# nftables sets and maps of the table: name -> (key type, value type or None for a set, interval).
SET_PORTS = "box_ports"  # UDP to a box's port is redirected to the WireGuard port
MAP_SNAT4 = "snat4"  # source (the box's tunnel addresses) -> the box's public IPv4
MAP_TCP_RX = "tcp_rx"  # box port -> counter of TCP the box sent to its ss-server
MAP_TCP_TX = "tcp_tx"  # box port -> counter of TCP its ss-server sent to the box
MAP_FWD_RX4 = "fwd_rx4"  # box address -> counter of what the box forwarded through the tunnel
MAP_FWD_RX6 = "fwd_rx6"
MAP_FWD_TX4 = "fwd_tx4"  # box address -> counter of what was forwarded to the box through the tunnel
MAP_FWD_TX6 = "fwd_tx6"
MAP_DOWN4 = "down4"  # box address -> download policer (traffic from the internet for the box)
MAP_DOWN6 = "down6"
MAP_UP4 = "up4"  # box address -> upload policer (traffic from the box through the tunnel)
MAP_UP6 = "up6"
MAP_UP_PORT = "up_port"  # box port -> upload policer (TCP from the box to its ss-server)
NFT_SETS: Dict[str, Tuple[str, Optional[str], bool]] = {
    SET_PORTS: ("inet_service", None, False),
    MAP_SNAT4: ("ipv4_addr", "ipv4_addr", False),
    MAP_TCP_RX: ("inet_service", "counter", False),
    MAP_TCP_TX: ("inet_service", "counter", False),
    MAP_FWD_RX4: ("ipv4_addr", "counter", False),
    MAP_FWD_RX6: ("ipv6_addr", "counter", True),
    MAP_FWD_TX4: ("ipv4_addr", "counter", False),
    MAP_FWD_TX6: ("ipv6_addr", "counter", True),
    MAP_DOWN4: ("ipv4_addr", "limit", False),
    MAP_DOWN6: ("ipv6_addr", "limit", True),
    MAP_UP4: ("ipv4_addr", "limit", False),
    MAP_UP6: ("ipv6_addr", "limit", True),
    MAP_UP_PORT: ("inet_service", "limit", False),
}
SCHEMA_COUNTER_PREFIX = "otb_schema_"


def table_rules(wg_port: int) -> str:
    """The fixed chains of the table. Every per-box value lives in the sets and maps above, so a box
    comes and goes by its elements and no rule is ever added or removed for one box. The redirect
    takes only UDP for the server itself: UDP to a box's public address on a port that happens to be
    a box port is forwarded to that box, not taken by WireGuard."""
    iface = WG_IFACE
    return f"""\
  chain prerouting_nat {{
    type nat hook prerouting priority dstnat; policy accept;
    fib daddr type local udp dport @{SET_PORTS} redirect to :{wg_port}
  }}
  chain postrouting_nat {{
    type nat hook postrouting priority srcnat; policy accept;
    oifname != "{iface}" snat ip to ip saddr map @{MAP_SNAT4}
  }}
  chain prerouting_police {{
    type filter hook prerouting priority filter; policy accept;
    iifname != "{iface}" limit name ip daddr map @{MAP_DOWN4} drop
    iifname != "{iface}" limit name ip6 daddr map @{MAP_DOWN6} drop
    iifname "{iface}" limit name ip saddr map @{MAP_UP4} drop
    iifname "{iface}" limit name ip6 saddr map @{MAP_UP6} drop
  }}
  chain input {{
    type filter hook input priority filter; policy accept;
    iifname != "{iface}" limit name tcp dport map @{MAP_UP_PORT} drop
    iifname != "{iface}" counter name tcp dport map @{MAP_TCP_RX}
  }}
  chain output {{
    type filter hook output priority filter; policy accept;
    oifname != "{iface}" counter name tcp sport map @{MAP_TCP_TX}
  }}
  chain forward {{
    type filter hook forward priority filter; policy accept;
    oifname "{iface}" tcp flags syn tcp option maxseg size set rt mtu
    iifname "{iface}" tcp flags syn tcp option maxseg size set rt mtu
    iifname "{iface}" counter name ip saddr map @{MAP_FWD_RX4}
    iifname "{iface}" counter name ip6 saddr map @{MAP_FWD_RX6}
    oifname "{iface}" counter name ip daddr map @{MAP_FWD_TX4}
    oifname "{iface}" counter name ip6 daddr map @{MAP_FWD_TX6}
  }}
"""


def _set_declarations() -> str:
    lines = []
    for name, (key, value, interval) in NFT_SETS.items():
        kind = "set" if value is None else "map"
        typ = key if value is None else f"{key} : {value}"
        flags = " flags interval;" if interval else ""
        lines.append(f"  {kind} {name} {{ type {typ};{flags} }}")
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class HostPlan:
    """What the host needs whatever the boxes: sysctls, MPTCP limits, the WireGuard interface and
    port, and the nftables table (its fixed part; ``table_signature`` changes when that part does)."""

    wg_port: int
    sysctls: Tuple[Tuple[str, str], ...] = SYSCTLS
    mptcp_subflows: int = MPTCP_SUBFLOWS
    mptcp_add_addr_accepted: int = MPTCP_ADD_ADDR_ACCEPTED

    @property
    def table_body(self) -> str:
        return _set_declarations() + table_rules(self.wg_port)

    @property
    def table_signature(self) -> str:
        digest = hashlib.sha256(self.table_body.encode("utf-8")).hexdigest()[:16]
        return SCHEMA_COUNTER_PREFIX + digest

    def table_script(self, *, replace: bool) -> str:
        """An ``nft -f`` script creating the table empty (deleting the old one first if ``replace``)."""
        head = f"table {NFT_FAMILY} {NFT_TABLE}\ndelete table {NFT_FAMILY} {NFT_TABLE}\n" if replace else ""
        return (
            f"{head}table {NFT_FAMILY} {NFT_TABLE} {{\n"
            f"  counter {self.table_signature} {{ }}\n{self.table_body}}}\n"
        )


@dataclass(frozen=True)
class WgPeer:
    public_key: str
    preshared_key: Optional[str]
    allowed_ips: Tuple[str, ...]  # sorted networks, e.g. ("100.64.0.1/32", "203.0.113.5/32")


@dataclass(frozen=True)
class Limit:
    bytes_per_s: int
    burst_bytes: int


@dataclass(frozen=True)
class BoxPlan:
    """Every piece of one box. Names of nftables objects carry the box id, so nothing is shared."""

    box_id: str
    serial: str
    port: int
    addresses: Tuple[str, ...] = ()  # on otbgw0, e.g. ("100.64.0.0/31",)
    routes: Tuple[str, ...] = ()  # via otbgw0, e.g. ("203.0.113.5/32", "2001:db8:1::/56")
    wg_peer: Optional[WgPeer] = None
    ss_config: Optional[str] = None  # the ss-server JSON configuration, canonical text
    elements: Dict[str, Dict[str, str]] = field(default_factory=dict)  # set/map -> key -> value
    counters: Tuple[str, ...] = ()
    limits: Dict[str, Limit] = field(default_factory=dict)

    @property
    def ss_fingerprint(self) -> Optional[str]:
        if self.ss_config is None:
            return None
        return hashlib.sha256(self.ss_config.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Plan:
    host: HostPlan
    boxes: Dict[str, BoxPlan]


def object_prefix(box_id: str) -> str:
    """The prefix of a box's nftables object names (``b`` + the box id's 32 hex digits)."""
    return "b" + box_id.replace("-", "").lower()


def counter_names(box_id: str) -> Dict[str, str]:
    prefix = object_prefix(box_id)
    return {kind: f"{prefix}_{kind}" for kind in ("tcp_rx", "tcp_tx", "fwd_rx", "fwd_tx")}


def ss_config_path(state_dir: str, box_id: str) -> str:
    return os.path.join(state_dir, "ss", f"{box_id}.json")


def ss_child_name(box_id: str) -> str:
    return f"ss-{box_id}"


def ss_argv(state_dir: str, box_id: str) -> Tuple[str, ...]:
    return ("ss-server", "-c", ss_config_path(state_dir, box_id), "--mptcp")


def limit_for(kbps: int) -> Limit:
    bytes_per_s = max(1, kbps * 1000 // 8)
    return Limit(bytes_per_s=bytes_per_s, burst_bytes=max(MIN_BURST_BYTES, bytes_per_s * BURST_MS // 1000))


def _ss_config(peer: Peer) -> Optional[str]:
    if peer.shadowsocks is None or peer.tunnel is None:
        return None
    config = {
        "server": "0.0.0.0",  # noqa: S104  (each box's port listens on every address of the server)
        "server_port": peer.tunnel_port,
        "password": peer.shadowsocks.password,
        "method": peer.shadowsocks.method,
        # The box's own outbound address: SNAT maps it to the box's public IPv4.
        "local_address": peer.tunnel.server_address,
        "mode": "tcp_only",
        "timeout": SS_TIMEOUT_S,
    }
    return json.dumps(config, sort_keys=True, indent=2) + "\n"


def box_plan(peer: Peer) -> BoxPlan:
    """Every piece of one box from its peer entry."""
    tunnel = peer.tunnel
    wg_peer: Optional[WgPeer] = None
    addresses: Tuple[str, ...] = ()
    routes = []
    if tunnel is not None:
        addresses = (f"{tunnel.server_address}/{tunnel.prefix_length}",)
        if peer.wg_public_key:
            allowed = [f"{tunnel.box_address}/32"]
            if peer.public_ipv4:
                allowed.append(f"{peer.public_ipv4}/32")
                routes.append(f"{peer.public_ipv4}/32")
            if peer.ipv6_prefix:
                allowed.append(peer.ipv6_prefix)
                routes.append(peer.ipv6_prefix)
            wg_peer = WgPeer(
                public_key=peer.wg_public_key,
                preshared_key=peer.wg_preshared_key,
                allowed_ips=tuple(sorted(allowed)),
            )
    ss_config = _ss_config(peer)
    counters = counter_names(peer.box_id)
    port = str(peer.tunnel_port)
    elements: Dict[str, Dict[str, str]] = {}

    def put(name: str, keys: Iterable[Optional[str]], value: str = "") -> None:
        for key in keys:
            if key:
                elements.setdefault(name, {})[key] = value

    box_v4 = [tunnel.box_address, peer.public_ipv4] if wg_peer is not None and tunnel else []
    box_v6 = [peer.ipv6_prefix] if wg_peer is not None else []
    if wg_peer is not None:
        put(SET_PORTS, [port])
    if tunnel is not None and peer.public_ipv4:
        put(MAP_SNAT4, [tunnel.server_address, tunnel.box_address], peer.public_ipv4)
    if ss_config is not None:
        put(MAP_TCP_RX, [port], counters["tcp_rx"])
        put(MAP_TCP_TX, [port], counters["tcp_tx"])
    put(MAP_FWD_RX4, box_v4, counters["fwd_rx"])
    put(MAP_FWD_RX6, box_v6, counters["fwd_rx"])
    put(MAP_FWD_TX4, box_v4, counters["fwd_tx"])
    put(MAP_FWD_TX6, box_v6, counters["fwd_tx"])
    limits: Dict[str, Limit] = {}
    rate = peer.rate_limit
    prefix = object_prefix(peer.box_id)
    if rate is not None and rate.download_kbps:
        name = f"{prefix}_down_{rate.download_kbps}"
        limits[name] = limit_for(rate.download_kbps)
        down_v4 = [*box_v4, tunnel.server_address if ss_config is not None and tunnel else None]
        put(MAP_DOWN4, down_v4, name)
        put(MAP_DOWN6, box_v6, name)
    if rate is not None and rate.upload_kbps:
        name = f"{prefix}_up_{rate.upload_kbps}"
        limits[name] = limit_for(rate.upload_kbps)
        put(MAP_UP4, box_v4, name)
        put(MAP_UP6, box_v6, name)
        if ss_config is not None:
            put(MAP_UP_PORT, [port], name)
    used = {value for values in elements.values() for value in values.values()}
    return BoxPlan(
        box_id=peer.box_id,
        serial=peer.serial,
        port=peer.tunnel_port,
        addresses=addresses,
        routes=tuple(sorted(routes)),
        wg_peer=wg_peer,
        ss_config=ss_config,
        elements=elements,
        counters=tuple(sorted(name for name in counters.values() if name in used)),
        limits={name: limit for name, limit in limits.items() if name in used},
    )


def build_plan(peers: Iterable[Peer], *, wg_port: int) -> Plan:
    """The desired state of the host for ``peers`` (already validated: ``peers.parse_peers``)."""
    boxes = {peer.box_id: box_plan(peer) for peer in peers}
    return Plan(host=HostPlan(wg_port=wg_port), boxes=boxes)


def normalize_network(text: str) -> str:
    """A network in the form the plan uses (``203.0.113.5`` -> ``203.0.113.5/32``)."""
    return str(ipaddress.ip_network(text, strict=False))
