"""What the diagnostics tools print on a simulated box: ``ip -j addr``, ``ip route``, ``ping``,
``ip mptcp endpoint show``, ``wg show``, ``traceroute``, in the real tools' formats (so the portal
renders a simulated result and a real one alike), built from the simulated box's state: its links
and their addresses, the WAN policy's roles, the tunnel of the configuration it applied
(docs/agent-protocol.md, "The simulated box").

Every check answers ``{"ok", "output", "error", "duration_s"}`` like :mod:`otb_agent.diagnostics`;
only the name lookup of the fleet server is real (the simulated box does reach that server).
"""

from __future__ import annotations

import asyncio
import json
import socket
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence

from otb_protocol import DIAGNOSTIC_CHECKS, WAN_ROLE_BACKUP, WAN_ROLE_DISABLED

from ..diagnostics import server_host_port

if TYPE_CHECKING:
    from .simulated import SimulatedCollector, _Wan

LAN_ADDRESS = "192.168.100.1"
LAN_PREFIX = 24
WG_LISTEN_PORT = 51820
MPTCP_ID_BASE = 1  # endpoint id of the policy's first link (data-plane contract: index + 1)


class SimulatedNetwork:
    """The network of one simulated box at this moment, as its tools would show it."""

    def __init__(self, box: SimulatedCollector, fleet_server: str) -> None:
        self.box = box
        self.host, self.port = server_host_port(fleet_server)
        config = box.config
        self.aggregation: Dict[str, Any] = _section(config, "server")
        self.tunnel: Dict[str, Any] = _section(config, "tunnel")
        self.public_ipv4: Optional[str] = config.get("public_ipv4")
        self.ups = box.links_up()
        self.carrying = box.carrying()

    @staticmethod
    def wanted(checks: Optional[Sequence[str]]) -> List[str]:
        return [c for c in DIAGNOSTIC_CHECKS if checks is None or c in checks]

    def server(self) -> Dict[str, Any]:
        return {"host": self.host, "port": self.port}

    async def check(self, name: str) -> Dict[str, Any]:
        steps = {
            "interfaces": self.interfaces,
            "routes": self.routes,
            "ping": self.ping,
            "mptcp": self.mptcp,
            "tunnel": self.wg_show,
            "traceroute": self.traceroute,
        }
        if name == "dns":
            return await self.dns()
        return steps[name]()

    # -- helpers
    def _path(self) -> Optional[_Wan]:
        """The link the route to the aggregation server takes: the first carrying one, by policy."""
        return self.carrying[0] if self.carrying else None

    def _rtt(self, extra: float = 0.0) -> float:
        link = self._path()
        base = link.rtt if link is not None and link.rtt is not None else 20.0
        return round(base + extra + self.box.rng.random() * 0.8, 3)

    @staticmethod
    def _result(ok: bool, output: str, error: Optional[str] = None, duration: float = 0.01) -> Dict[str, Any]:
        return {"ok": ok, "output": output, "error": None if ok else error, "duration_s": round(duration, 3)}

    def _usable(self) -> List[_Wan]:
        return [w for w, up in zip(self.box.wans, self.ups) if up and w.role != WAN_ROLE_DISABLED]

    # -- the checks
    def interfaces(self) -> Dict[str, Any]:
        """``ip -j addr``: loopback, the LAN bridge, every WAN (no address while down), the tunnel."""
        items: List[Dict[str, Any]] = [
            _link(1, "lo", "UNKNOWN", "loopback", [("127.0.0.1", 8)], mtu=65536),
            _link(2, "lan", "UP", "ether", [(LAN_ADDRESS, LAN_PREFIX)]),
        ]
        for index, (w, up) in enumerate(zip(self.box.wans, self.ups), start=3):
            items.append(_link(index, w.iface, "UP" if up else "DOWN", "ether", [(w.ip, 24)] if up else []))
        tunnel_addresses = []
        if self.tunnel.get("box_address"):
            tunnel_addresses.append((str(self.tunnel["box_address"]), 31))
        if self.public_ipv4:
            tunnel_addresses.append((str(self.public_ipv4), 32))
        items.append(
            _link(
                len(items) + 1,
                self.box.tunnel_iface,
                "UNKNOWN" if self.carrying else "DOWN",
                "none",
                tunnel_addresses,
                mtu=1420,
            )
        )
        return self._result(True, json.dumps(items))

    def routes(self) -> Dict[str, Any]:
        """``ip route`` (main table): a default route per usable link by preference, the host route
        to the aggregation server through the first carrying one, the connected networks."""
        lines = []
        usable = self._usable()
        for metric, w in enumerate(usable, start=1):
            lines.append(f"default via {w.gateway()} dev {w.iface} proto static metric {metric * 10}")
        path = self._path()
        if path is not None and self.aggregation.get("public_ipv4"):
            lines.append(f"{self.aggregation['public_ipv4']} via {path.gateway()} dev {path.iface}")
        if self.tunnel.get("prefix") and self.carrying:
            lines.append(
                f"{self.tunnel['prefix']} dev {self.box.tunnel_iface} proto kernel scope link "
                f"src {self.tunnel.get('box_address')}"
            )
        for w in usable:
            network = w.ip.rsplit(".", 1)[0] + ".0/24"
            lines.append(f"{network} dev {w.iface} proto kernel scope link src {w.ip}")
        lines.append(f"192.168.100.0/{LAN_PREFIX} dev lan proto kernel scope link src {LAN_ADDRESS}")
        ok = bool(usable)
        return self._result(ok, "\n".join(lines) + "\n", "no default route: every WAN link is down")

    async def dns(self) -> Dict[str, Any]:
        """The name of the fleet server, looked up for real, and a connection to it (simulated)."""
        if not self.carrying:
            return self._result(False, "", "Temporary failure in name resolution (no WAN link is up)")
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(self.host, None, proto=socket.IPPROTO_TCP)
            addresses = sorted({str(info[4][0]) for info in infos})
        except OSError as exc:
            return self._result(False, "", str(exc))
        rtt = self._rtt()
        result = self._result(True, ", ".join(addresses), duration=rtt / 1000)
        result["tcp_connect"] = self._result(
            True, f"connected to {addresses[0]}:{self.port} in {rtt:.1f} ms", duration=rtt / 1000
        )
        return result

    def ping(self) -> Dict[str, Any]:
        """``ping -c 3 -W 1 <fleet server>`` through the tunnel."""
        target = self.host
        head = f"PING {target} ({target}) 56(84) bytes of data.\n"
        if not self.carrying:
            text = (
                head + f"\n--- {target} ping statistics ---\n"
                "3 packets transmitted, 0 received, 100% packet loss, time 2035ms\n"
            )
            return self._result(False, text, "exit status 1", 3.0)
        times = [self._rtt(extra=1.0) for _ in range(3)]
        lines = [
            f"64 bytes from {target}: icmp_seq={i} ttl=57 time={t:.1f} ms" for i, t in enumerate(times, 1)
        ]
        average = sum(times) / 3
        deviation = (sum((t - average) ** 2 for t in times) / 3) ** 0.5
        text = (
            head
            + "\n".join(lines)
            + f"\n\n--- {target} ping statistics ---\n"
            + "3 packets transmitted, 3 received, 0% packet loss, time 2003ms\n"
            + f"rtt min/avg/max/mdev = {min(times):.3f}/{average:.3f}/{max(times):.3f}/{deviation:.3f} ms\n"
        )
        return self._result(True, text, duration=2.0 + max(times) / 1000)

    def mptcp(self) -> Dict[str, Any]:
        """``ip mptcp endpoint show``: one subflow endpoint per usable link, ``backup`` for backups;
        ids from the links' places in the policy."""
        lines = []
        for index, (w, up) in enumerate(zip(self.box.wans, self.ups)):
            if not up or w.role == WAN_ROLE_DISABLED:
                continue
            flags = "subflow backup" if w.role == WAN_ROLE_BACKUP else "subflow"
            lines.append(f"{w.ip} id {index + MPTCP_ID_BASE} {flags} dev {w.iface} ")
        ok = bool(lines)
        return self._result(
            ok, "\n".join(lines) + ("\n" if lines else ""), "no MPTCP endpoint: every WAN link is down"
        )

    def wg_show(self) -> Dict[str, Any]:
        """``wg show otb0``: the tunnel to the aggregation server of the configuration."""
        iface = self.box.tunnel_iface
        endpoint = self.aggregation.get("public_ipv4")
        if not endpoint:
            return self._result(False, "", "no aggregation server in the applied configuration")
        if not self.carrying:
            return self._result(
                False,
                f"interface: {iface}\n  listening port: {WG_LISTEN_PORT}\n",
                f"no handshake with {endpoint}:{self.aggregation.get('port')}: every WAN link is down",
            )
        handshake = 5 + int(self.box.rng.random() * 110)
        text = (
            f"interface: {iface}\n"
            f"  listening port: {WG_LISTEN_PORT}\n\n"
            f"peer: {self.aggregation.get('wg_public_key') or '(the aggregation server)'}\n"
            f"  endpoint: {endpoint}:{self.aggregation.get('port')}\n"
            "  allowed ips: 0.0.0.0/0, ::/0\n"
            f"  latest handshake: {handshake} seconds ago\n"
            f"  transfer: {_bytes(self.box.tunnel_rx_bytes)} received, "
            f"{_bytes(self.box.tunnel_tx_bytes)} sent\n"
            "  persistent keepalive: every 25 seconds\n"
        )
        return self._result(True, text)

    def traceroute(self) -> Dict[str, Any]:
        """``traceroute -n`` to the fleet server: through the tunnel, so the first hop is the
        aggregation server's end of it."""
        target = self.host
        head = f"traceroute to {target} ({target}), 15 hops max, 60 byte packets\n"
        if not self.carrying:
            return self._result(
                False, head + " 1  * * *\n", "no route to the fleet server: every WAN link is down"
            )
        hops = []
        if self.tunnel.get("server_address"):
            hops.append(str(self.tunnel["server_address"]))
        hops.append(target)
        lines = [f" {n}  {hop}  {self._rtt(extra=n * 0.7):.3f} ms" for n, hop in enumerate(hops, start=1)]
        return self._result(True, head + "\n".join(lines) + "\n", duration=1.5)


def _section(config: Dict[str, Any], key: str) -> Dict[str, Any]:
    value = config.get(key)
    return value if isinstance(value, dict) else {}


def _link(
    index: int, name: str, state: str, link_type: str, addresses: List[Any], mtu: int = 1500
) -> Dict[str, Any]:
    return {
        "ifindex": index,
        "ifname": name,
        "flags": ["UP", "LOWER_UP"] if state != "DOWN" else ["NO-CARRIER", "UP"],
        "mtu": mtu,
        "operstate": state,
        "link_type": link_type,
        "addr_info": [
            {
                "family": "inet",
                "local": address,
                "prefixlen": prefix,
                "scope": "host" if name == "lo" else "global",
            }
            for address, prefix in addresses
        ],
    }


def _bytes(count: int) -> str:
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.2f} {unit}"
        value /= 1024
    return f"{value:.2f} TiB"
