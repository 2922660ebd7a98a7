"""The simulated box's links (:mod:`.simulated`): their kinds and addresses, which of them carry
traffic under the WAN policy and how it splits between them, and what the tunnel delivers of it
(docs/agent-protocol.md, "The simulated box"). A module of its own, so that no module `otb-agent
run` imports is large to compile (bench/agent.py)."""

from __future__ import annotations

import re
from typing import Any, Dict, List, Optional, Protocol, Sequence, Tuple

from otb_protocol import WAN_MODE_LOAD_BALANCE, WAN_ROLE_BACKUP, WAN_ROLE_PRIMARY


class Random(Protocol):
    def random(self) -> float: ...


# kind: (base rtt ms, jitter ms, base loss %, down Mbit/s, up Mbit/s, P(link failure) per sample)
PROFILES: Dict[str, tuple] = {
    "fiber": (5.0, 0.5, 0.0, 900.0, 300.0, 0.001),
    "cable": (12.0, 2.0, 0.05, 300.0, 30.0, 0.002),
    "vdsl": (15.0, 1.5, 0.1, 60.0, 12.0, 0.002),
    "adsl": (35.0, 3.0, 0.3, 12.0, 1.0, 0.003),
    "sdsl": (12.0, 1.0, 0.05, 20.0, 20.0, 0.002),
    "lte": (40.0, 12.0, 0.8, 80.0, 25.0, 0.006),
    "5g": (22.0, 6.0, 0.4, 400.0, 60.0, 0.005),
    "satellite": (600.0, 40.0, 1.0, 100.0, 10.0, 0.004),
}
_FIXED = ("fiber", "vdsl", "adsl", "cable", "sdsl")
_BACKUP = ("lte", "lte", "5g", "vdsl", "adsl", "satellite")
_LABELS = {
    "fiber": "Fibre",
    "cable": "Cable",
    "vdsl": "VDSL",
    "adsl": "ADSL",
    "sdsl": "SDSL",
    "lte": "4G",
    "5g": "5G",
    "satellite": "Satellite",
}
_MOBILE = ("lte", "5g", "satellite")

# The WANs' public addresses: the documentation ranges (RFC 5737), never real address space. The
# upper half of each, as the demo's own public pools and aggregation servers use the lower halves.
WAN_NETWORKS = ("192.0.2", "198.51.100", "203.0.113")
WAN_HOSTS = (128, 254)

# The tunnel (shadowsocks over MPTCP, docs/agent-protocol.md): each 1500-byte packet a subflow
# carries holds 72 bytes of headers the LAN never sees (outer IPv4 20, TCP 20, timestamps 12,
# MPTCP DSS 20), so one link through the tunnel delivers 0.952 of what it carries (measured on a
# shaped 20 Mbit/s link: 19.1). A connection bonded over several links also loses to reordering and
# the scheduler: measured, bonded throughput was 0.88 to 0.94 of the sum of the links, so the
# bonding factor is 0.966 +- 0.02 (0.92 overall, with noise).
MTU = 1500
TUNNEL_HEADER_BYTES = 72
HEADER_EFFICIENCY = 1 - TUNNEL_HEADER_BYTES / MTU
BONDING_EFFICIENCY = 0.966
BONDING_NOISE = 0.02

# The traffic offered to the box: a random walk of the share of its primaries' capacity in use.
UPLOAD_SHARE = 0.5  # of the upload capacity, relative to the download's share
LOAD_BALANCE_CONNECTIONS = (4, 16)  # bulk connections spread per sample, fewest to most

_SPEC_ITEM = re.compile(r"([a-z0-9._-]{1,15}):([a-z0-9]+)")


def wans_from_spec(spec: str) -> List[Tuple[str, str]]:
    """``"wan:fiber wan2:vdsl wan3:lte"`` -> ``[("wan", "fiber"), ...]`` (the demo's CSV column and
    ``--wan``); ValueError naming the bad item."""
    wans: List[Tuple[str, str]] = []
    for item in spec.replace(",", " ").split():
        match = _SPEC_ITEM.fullmatch(item)
        if match is None:
            raise ValueError(f"wans: {item!r} is not IFACE:KIND")
        iface, kind = match.groups()
        if kind not in PROFILES:
            raise ValueError(f"wans: {item!r}: kind must be one of {', '.join(PROFILES)}")
        if any(iface == seen for seen, _ in wans):
            raise ValueError(f"wans: {iface!r} is listed twice")
        wans.append((iface, kind))
    return wans


class _Wan:
    __slots__ = (
        "down_left",
        "down_mbps",
        "iface",
        "ip",
        "kind",
        "label",
        "lat",
        "loss",
        "profile",
        "role",
        "rtt",
        "up_mbps",
    )

    def __init__(self, iface: str, kind: str, ip: str) -> None:
        self.iface = iface
        self.kind = kind
        self.label = _LABELS.get(kind, kind)
        self.profile = PROFILES[kind]
        self.lat = 1.0  # multiplicative random walk around the base rtt
        self.loss = self.profile[2]
        self.down_left = 0  # samples left before the link comes back
        self.ip = ip
        self.role = WAN_ROLE_PRIMARY  # from the policy; a link it does not name is a primary
        self.down_mbps: float = self.profile[3]  # the profile's speed, or the policy's if lower
        self.up_mbps: float = self.profile[4]
        self.rtt: Optional[float] = None  # the last sample's, for the diagnostics

    @property
    def up(self) -> bool:
        return self.down_left == 0

    def gateway(self) -> str:
        return self.ip.rsplit(".", 1)[0] + ".1"


def carrying_links(wans: Sequence[_Wan], ups: Sequence[bool]) -> List[bool]:
    """Which links carry traffic: the primaries that are up, or while every primary is down the
    backups that are up (MPTCP's backup subflows); never a disabled link."""
    primaries = [up and w.role == WAN_ROLE_PRIMARY for w, up in zip(wans, ups)]
    if any(primaries):
        return primaries
    return [up and w.role == WAN_ROLE_BACKUP for w, up in zip(wans, ups)]


def tunnel_efficiency(mode: str, carrying: int, rng: Random) -> float:
    """The share of what the links carry that reaches the LAN (see the constants above)."""
    if carrying > 1 and mode != WAN_MODE_LOAD_BALANCE:
        noise = (rng.random() + rng.random() - 1.0) * BONDING_NOISE
        return HEADER_EFFICIENCY * (BONDING_EFFICIENCY + noise)
    return HEADER_EFFICIENCY


def split(
    mode: str, carrying: List[_Wan], demand: float, *, upload: bool, load: float, rng: Random
) -> Dict[str, int]:
    """Bits per second each carrying link moves for ``demand``: by capacity when bonded, by
    connection for load-balance (more connections at a higher ``load``); never more than a link's
    capacity."""
    caps = [(w.up_mbps if upload else w.down_mbps) * 1e6 for w in carrying]
    total = sum(caps)
    if not carrying or total <= 0:
        return {}
    if mode == WAN_MODE_LOAD_BALANCE:
        low, high = LOAD_BALANCE_CONNECTIONS
        connections = low + int(load * (high - low))
        counts = [0] * len(carrying)
        for _ in range(connections):  # each connection lands on a link, weighted by capacity
            point, index = rng.random() * total, 0
            while index < len(caps) - 1 and point >= caps[index]:
                point -= caps[index]
                index += 1
            counts[index] += 1
        shares = [count / connections for count in counts]
    else:
        shares = [cap / total for cap in caps]
    return {
        w.iface: int(min(cap, demand * share * (0.9 + rng.random() * 0.2)))
        for w, cap, share in zip(carrying, caps, shares)
    }


def capped(line_mbps: float, kbps: Any) -> float:
    if isinstance(kbps, int) and not isinstance(kbps, bool) and kbps > 0:
        return min(line_mbps, kbps / 1000.0)
    return line_mbps
