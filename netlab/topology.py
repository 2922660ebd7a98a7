"""The lab's topology: only the links. Everything the data plane needs on top of them (tunnels,
MPTCP endpoints, NAT to the public address, routes to it) is configured by otb-gateway and otb-agent
from what the backend serves.

::

    lan ── box ─┬─ wan1 ── isp1 ─┐                    ┌── srv   (aggregation server, otb-gateway)
                └─ wan2 ── isp2 ─┼── net (internet) ──┼── inet  (a host on the internet)
    lan2 ── box2 ── wan1 ── isp3 ┘                    └── ctl   (the otb-fleet backend's address)

Each ISP is a NAT router (the box's WAN address is private, as behind most access links); each
box-ISP link is shaped with tbf both ways. The aggregation server's public address is on ``net``'s
side; the public IPv4 pool the backend hands out is routed to it, as a hosting provider would.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from netlab.netns import Namespaces

PUBLIC_POOL = "198.51.100.0/28"  # documentation range (RFC 5737), routed to the server by "net"
TUNNEL_POOL = "100.64.0.0/24"
IPV6_POOL = "2001:db8:100::/48"
CTL_ADDRESS = "10.200.250.2"
CTL_PORT = 8000
SERVER_ADDRESS = "10.200.100.2"
INET_ADDRESS = "10.200.200.2"
LAN_CLIENT = {"box": "192.168.50.10", "box2": "192.168.60.10"}
LAN_GATEWAY = {"box": "192.168.50.1", "box2": "192.168.60.1"}


@dataclass
class Wan:
    """One access link of a box: the box's interface and address, the ISP's end and namespace."""

    box: str
    name: str  # interface name in the box, as the WAN policy names it
    isp: str  # ISP namespace role
    address: str
    gateway: str
    mbps: float

    @property
    def isp_if(self) -> str:
        return f"to-{self.box}"


@dataclass
class Topology:
    prefix: str
    links: int = 2
    link_mbps: float = 20.0
    second_box: bool = False
    ns: Namespaces = field(init=False)
    wans: list[Wan] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.ns = Namespaces(self.prefix)

    @property
    def backend_url(self) -> str:
        return f"http://{CTL_ADDRESS}:{CTL_PORT}"

    def build(self) -> None:
        self.ns.cleanup()  # leftovers of a run that died
        for role in ("net", "srv", "inet", "ctl", "box", "lan"):
            self.ns.add(role)
        self.ns.link("net", "to-srv", "10.200.100.1/24", "srv", "eth0", f"{SERVER_ADDRESS}/24")
        self.ns.link("net", "to-inet", "10.200.200.1/24", "inet", "eth0", f"{INET_ADDRESS}/24")
        self.ns.link("net", "to-ctl", "10.200.250.1/24", "ctl", "eth0", f"{CTL_ADDRESS}/24")
        for role in ("srv", "inet", "ctl"):
            gateway = {"srv": "10.200.100.1", "inet": "10.200.200.1", "ctl": "10.200.250.1"}[role]
            self.ns.ip(role, "route", "add", "default", "via", gateway)
        # the hosting provider routes the public pool to the aggregation server
        self.ns.ip("net", "route", "add", PUBLIC_POOL, "via", SERVER_ADDRESS)
        for index in range(1, self.links + 1):
            self._access_link("box", f"wan{index}", f"isp{index}", index)
        self._lan("box")
        if self.second_box:
            self.ns.add("box2")
            self.ns.add("lan2")
            self._access_link("box2", "wan1", f"isp{self.links + 1}", self.links + 1)
            self._lan("box2", lan="lan2")

    def _access_link(self, box: str, wan: str, isp: str, index: int) -> None:
        self.ns.add(isp)
        self.ns.link("net", f"to-{isp}", f"10.200.{index}.1/24", isp, "eth0", f"10.200.{index}.2/24")
        self.ns.ip(isp, "route", "add", "default", "via", f"10.200.{index}.1")
        self.ns.nft(
            isp,
            "table ip isp {\n chain post { type nat hook postrouting priority srcnat;"
            ' oifname "eth0" masquerade; }\n}\n',
        )
        address, gateway = f"100.100.{index}.2", f"100.100.{index}.1"
        self.ns.link(isp, f"to-{box}", f"{gateway}/24", box, wan, f"{address}/24")
        # The box's WANs each give it a default route (as DHCP would), preferred in their order.
        self.ns.ip(box, "route", "add", "default", "via", gateway, "dev", wan, "metric", str(10 * index))
        wan_link = Wan(box=box, name=wan, isp=isp, address=address, gateway=gateway, mbps=self.link_mbps)
        self.ns.shape(box, wan, self.link_mbps)
        self.ns.shape(isp, wan_link.isp_if, self.link_mbps)
        self.wans.append(wan_link)

    def _lan(self, box: str, lan: str = "lan") -> None:
        gateway, client = LAN_GATEWAY[box], LAN_CLIENT[box]
        self.ns.link(box, "lan0", f"{gateway}/24", lan, "eth0", f"{client}/24")
        self.ns.ip(lan, "route", "add", "default", "via", gateway)

    def wans_of(self, box: str = "box") -> list[Wan]:
        return [wan for wan in self.wans if wan.box == box]

    def cut(self, wan: Wan) -> None:
        """The ISP's end goes down: the box sees its WAN lose carrier, as when a modem dies."""
        self.ns.ip(wan.isp, "link", "set", wan.isp_if, "down")

    def restore(self, wan: Wan) -> None:
        self.ns.ip(wan.isp, "link", "set", wan.isp_if, "up")
        self.ns.shape(wan.isp, wan.isp_if, wan.mbps)

    def cleanup(self) -> None:
        self.ns.cleanup()
