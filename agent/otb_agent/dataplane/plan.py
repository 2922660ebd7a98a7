"""The box's data-plane plan: what the kernel and the tunnel daemons must look like for a config.

:func:`plan_build` is pure: it takes the configuration document the backend serves and the WAN
links as observed on the box (``{name: {up, address, gateway, device}}``) and returns a JSON-able
plan. The Linux applier (:mod:`otb_agent.dataplane.linux`) converges the kernel to it, and the
OpenWrt hook reads the same plan from ``otb-agent plan CONFIG`` (docs/data-plane.md, "Box").

Names and numbers are the data-plane contract's: WAN ``i`` (its index in
``wan_policy.interfaces``) owns routing table ``100+i``, rule preference ``1000+i`` and MPTCP
endpoint id ``i+1``; LAN traffic that is not redirected to ss-redir goes through table 200 to the
WireGuard interface ``otb0``; the nftables table is ``inet otb_box``.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

from otb_protocol import (
    WAN_INTERFACE_NAME_RE,
    WAN_MODE_LOAD_BALANCE,
    WAN_MODES,
    WAN_ROLE_BACKUP,
    WAN_ROLE_DISABLED,
    WAN_ROLE_PRIMARY,
    WAN_ROLES,
)

from . import TUNNEL_INTERFACE

PLAN_VERSION = 1
WAN_TABLE_BASE = 100
WAN_RULE_PREF_BASE = 1000
WAN_MAX = 16
LAN_TABLE = 200
LAN_RULE_PREF = 2000
# LAN routing, before the rule sending everything left to table 200: the box's public address
# answers through the tunnel; the box's own traffic (lo), the tunnel's and the WANs' inbound
# traffic keep the main table; then the main table's specific routes (connected LAN subnets) win
# over the tunnel's default route (suppress_prefixlength 0 ignores main's default routes).
PUBLIC_RULE_PREF = 1900
LOCAL_RULE_PREF = 1950
TUNNEL_IN_RULE_PREF = 1951
WAN_IN_RULE_PREF_BASE = 1960
MAIN_SPECIFIC_RULE_PREF = 1990
# A WAN's table falls back to "unreachable" when its link is down: a subflow bound to that WAN's
# address must not leak out of another WAN (its ISP would drop or re-NAT it).
UNREACHABLE_METRIC = 4278198272
# The kernel caps MPTCP subflows (and the accepted ADD_ADDRs) at 8 per connection.
MPTCP_MAX_SUBFLOWS = 8
SS_REDIR_PORT = 11080
SS_REDIR_TIMEOUT_S = 600
NFT_FAMILY = "inet"
NFT_TABLE = "otb_box"
WG_KEEPALIVE_S = 25
WG_ALLOWED_IPS = ("0.0.0.0/0", "::/0")
SS_REDIR_CONFIG_FILE = "ss-redir.json"
WG_PRESHARED_KEY_FILE = "wg-psk"
WG_PRIVATE_KEY_FILE = "wg_private_key"  # the agent's own key pair (otb_agent.enrollment)
# LAN TCP goes to ss-redir exactly when the tunnel would carry it otherwise: when no specific route
# of the main table (the box's connected LAN and WAN subnets, static routes) covers its destination.
# These never go to ss-redir whatever the routes: this host, loopback, link-local, multicast, reserved.
NEVER_REDIRECTED = ("0.0.0.0/8", "127.0.0.0/8", "169.254.0.0/16", "224.0.0.0/4", "240.0.0.0/4")
# Without the main table's routes (``otb-agent plan --links`` given alone): the private ranges.
PRIVATE_NETWORKS = ("10.0.0.0/8", "100.64.0.0/10", "172.16.0.0/12", "192.168.0.0/16")
PORT_FORWARD_PROTOCOLS = ("tcp", "udp")


class PlanError(ValueError):
    """The configuration cannot be planned; the message names the offending field."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field


def _ipv4(value: Any, field: str) -> str:
    try:
        if isinstance(value, str):
            return str(ipaddress.IPv4Address(value))
    except ValueError:
        pass
    raise PlanError(field, f"must be an IPv4 address (got {value!r})")


def _port(value: Any, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise PlanError(field, "must be a port number from 1 to 65535")
    return value


def _wan_policy(config: Dict[str, Any]) -> Tuple[str, List[Dict[str, Any]]]:
    policy = config.get("wan_policy")
    if not isinstance(policy, dict):
        raise PlanError("wan_policy", "must be an object")
    mode = policy.get("mode")
    if mode not in WAN_MODES:
        raise PlanError("wan_policy.mode", f"must be one of {', '.join(WAN_MODES)} (got {mode!r})")
    interfaces = policy.get("interfaces")
    if not isinstance(interfaces, list) or not interfaces:
        raise PlanError("wan_policy.interfaces", "must be a non-empty list")
    if len(interfaces) > WAN_MAX:
        raise PlanError("wan_policy.interfaces", f"at most {WAN_MAX} interfaces")
    out: List[Dict[str, Any]] = []
    seen = set()
    for index, item in enumerate(interfaces):
        where = f"wan_policy.interfaces[{index}]"
        if not isinstance(item, dict):
            raise PlanError(where, "must be an object")
        name = item.get("name")
        if not isinstance(name, str) or not WAN_INTERFACE_NAME_RE.fullmatch(name):
            raise PlanError(f"{where}.name", f"is not an interface name: {name!r}")
        if name in seen:
            raise PlanError(f"{where}.name", f"interface {name!r} is listed twice")
        seen.add(name)
        role = item.get("role", WAN_ROLE_PRIMARY)
        if role not in WAN_ROLES:
            raise PlanError(f"{where}.role", f"must be one of {', '.join(WAN_ROLES)} (got {role!r})")
        up_kbps = item.get("up_kbps")
        if not isinstance(up_kbps, int) or isinstance(up_kbps, bool) or up_kbps < 1:
            up_kbps = None
        out.append({"name": name, "role": role, "up_kbps": up_kbps})
    return str(mode), out


def _link(links: Dict[str, Any], name: str) -> Dict[str, Any]:
    """The observed state of one WAN: usable when up with an address (and a gateway, or a
    point-to-point device that needs none)."""
    raw = links.get(name)
    raw = raw if isinstance(raw, dict) else {}
    where = f"links.{name}"
    address = raw.get("address")
    address = _ipv4(address, f"{where}.address") if address else None
    gateway = raw.get("gateway")
    gateway = _ipv4(gateway, f"{where}.gateway") if gateway else None
    device = raw.get("device") or name
    if not isinstance(device, str) or not device:
        raise PlanError(f"{where}.device", "must be an interface name")
    return {
        "up": bool(raw.get("up")) and address is not None,
        "address": address,
        "gateway": gateway,
        "device": device,
    }


def _endpoint_flags(mode: str, role: str) -> Optional[List[str]]:
    """The MPTCP endpoint flags of a WAN with ``role`` under ``mode``; None: no endpoint.

    aggregate and failover: primaries ``subflow`` (they carry together), backups ``subflow
    backup`` (standby subflows the scheduler uses only when no primary subflow is usable).
    load-balance: connections are spread over the primaries by the ECMP route to the server and
    each stays on the link it started on: no join between primaries; backups are standby
    ``subflow backup`` as in the other modes. docs/data-plane.md says why (the kernel decides
    "backup" per local address, not per connection).
    """
    if role == WAN_ROLE_DISABLED:
        return None
    if role == WAN_ROLE_BACKUP:
        return ["subflow", "backup"]
    if mode == WAN_MODE_LOAD_BALANCE:
        return None
    return ["subflow"]


def _route_to(wan: Dict[str, Any]) -> Dict[str, Any]:
    hop: Dict[str, Any] = {"dev": wan["device"]}
    if wan["gateway"]:
        hop["via"] = wan["gateway"]
    return hop


def _server_route(mode: str, wans: List[Dict[str, Any]], server_ip: str) -> Optional[Dict[str, Any]]:
    """The route to the aggregation server: through the first up link by preference (primaries in
    policy order, then backups); in load-balance, an ECMP route over every up primary, weighted by
    ``up_kbps`` when every one of them gives it."""
    up = [w for w in wans if w["up"] and w["role"] != WAN_ROLE_DISABLED]
    primaries = [w for w in up if w["role"] == WAN_ROLE_PRIMARY]
    backups = [w for w in up if w["role"] == WAN_ROLE_BACKUP]
    chosen = primaries if mode == WAN_MODE_LOAD_BALANCE and len(primaries) > 1 else (primaries or backups)[:1]
    if not chosen:
        return None
    weights = [1] * len(chosen)
    if len(chosen) > 1 and all(w["up_kbps"] for w in chosen):
        low = min(w["up_kbps"] for w in chosen)
        weights = [max(1, min(256, round(w["up_kbps"] / low))) for w in chosen]
    hops = []
    for wan, weight in zip(chosen, weights):
        hop = _route_to(wan)
        if len(chosen) > 1:
            hop["weight"] = weight
        hops.append(hop)
    return {"dst": f"{server_ip}/32", "table": "main", "wans": [w["name"] for w in chosen], "nexthops": hops}


def _port_forwards(config: Dict[str, Any]) -> List[Dict[str, Any]]:
    raw = config.get("port_forwards")
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise PlanError("port_forwards", "must be a list")
    out = []
    for index, item in enumerate(raw):
        where = f"port_forwards[{index}]"
        if not isinstance(item, dict):
            raise PlanError(where, "must be an object")
        proto = item.get("proto", "tcp")
        if proto not in PORT_FORWARD_PROTOCOLS:
            raise PlanError(f"{where}.proto", "must be tcp or udp")
        out.append(
            {
                "proto": proto,
                "port": _port(item.get("port"), f"{where}.port"),
                "to_address": _ipv4(item.get("to_address"), f"{where}.to_address"),
                "to_port": _port(item.get("to_port", item.get("port")), f"{where}.to_port"),
            }
        )
    return out


def _direct(direct_networks: Optional[Sequence[Any]], tunnel_prefix: Optional[str]) -> List[str]:
    """The destinations LAN TCP reaches without ss-redir, collapsed (nft refuses overlapping
    intervals)."""
    nets = [ipaddress.IPv4Network(n) for n in NEVER_REDIRECTED]
    if tunnel_prefix:
        nets.append(ipaddress.IPv4Network(tunnel_prefix, strict=False))
    if direct_networks is None:
        nets += [ipaddress.IPv4Network(n) for n in PRIVATE_NETWORKS]
    else:
        for index, net in enumerate(direct_networks):
            try:
                nets.append(ipaddress.IPv4Network(net, strict=False))
            except (TypeError, ValueError) as e:
                raise PlanError(f"direct_networks[{index}]", f"must be an IPv4 network (got {net!r})") from e
    return [str(n) for n in ipaddress.collapse_addresses(nets)]


def _nft_ruleset(
    *,
    direct: List[str],
    wan_devices: List[str],
    tunnel: Optional[str],
    redirect: bool,
    public_ipv4: Optional[str],
    forwards: List[Dict[str, Any]],
) -> str:
    """The text of table ``inet otb_box`` (without its marker rule, added by the caller)."""

    def names(items: List[str]) -> str:
        return "{ " + ", ".join(f'"{n}"' for n in items) + " }"

    outside = wan_devices + ([tunnel] if tunnel else []) + ["lo"]
    pre: List[str] = []
    post: List[str] = []
    inp: List[str] = []
    out: List[str] = []
    fwd: List[str] = []
    if tunnel and public_ipv4:
        for f in forwards:
            pre.append(
                f'iifname "{tunnel}" ip daddr {public_ipv4} {f["proto"]} dport {f["port"]} '
                f"dnat ip to {f['to_address']}:{f['to_port']}"
            )
    if redirect:
        pre.append(
            f"iifname != {names(outside)} ip daddr != {{ {', '.join(direct)} }} "
            f"meta l4proto tcp redirect to :{SS_REDIR_PORT}"
        )
        # ss-redir listens on every address: nobody outside reaches it through a WAN.
        inp.append(f"iifname {names(wan_devices)} tcp dport {SS_REDIR_PORT} drop" if wan_devices else "")
        # The bytes of redirected connections, both ways (the box's tunnel telemetry).
        inp.append(f'tcp dport {SS_REDIR_PORT} ct status dnat counter name "redirect_up"')
        out.append(f'tcp sport {SS_REDIR_PORT} ct status dnat counter name "redirect_down"')
    if tunnel:
        if public_ipv4:
            post.append(f'oifname "{tunnel}" ip saddr != {public_ipv4} snat ip to {public_ipv4}')
        fwd.append(f'oifname "{tunnel}" tcp flags syn tcp option maxseg size set rt mtu')
    lines = [f"table {NFT_FAMILY} {NFT_TABLE} {{"]
    if redirect:
        lines += ["\tcounter redirect_up {", "\t}", "\tcounter redirect_down {", "\t}"]
    for name, kind, hook, prio, rules in (
        ("prerouting", "nat", "prerouting", "dstnat", pre),
        ("postrouting", "nat", "postrouting", "srcnat", post),
        ("input", "filter", "input", "filter", inp),
        ("output", "filter", "output", "filter", out),
        ("forward", "filter", "forward", "mangle", fwd),
    ):
        rules = [r for r in rules if r]
        if not rules:
            continue
        lines.append(f"\tchain {name} {{")
        lines.append(f"\t\ttype {kind} hook {hook} priority {prio}; policy accept;")
        lines += [f"\t\t{r}" for r in rules]
        lines.append("\t}")
    lines.append("}")
    return "\n".join(lines) + "\n"


def plan_build(
    config: Dict[str, Any],
    links: Dict[str, Any],
    *,
    state_dir: str = ".",
    tunnel_interface: str = TUNNEL_INTERFACE,
    direct_networks: Optional[Sequence[Any]] = None,
) -> Dict[str, Any]:
    """The data-plane plan for ``config`` given the observed ``links`` (see the module doc) and the
    destinations of the main table's specific routes (``direct_networks``: LAN TCP to them is not
    redirected; None: the private ranges).

    Raises :class:`PlanError` naming the field when the config cannot be planned."""
    if not isinstance(config, dict):
        raise PlanError("config", "must be an object")
    if not isinstance(links, dict):
        raise PlanError("links", "must be an object")
    mode, interfaces = _wan_policy(config)

    wans: List[Dict[str, Any]] = []
    for index, itf in enumerate(interfaces):
        link = _link(links, itf["name"])
        flags = _endpoint_flags(mode, itf["role"])
        wans.append(
            {
                "name": itf["name"],
                "index": index,
                "role": itf["role"],
                "up_kbps": itf["up_kbps"],
                **link,
                "table": WAN_TABLE_BASE + index,
                "rule_pref": WAN_RULE_PREF_BASE + index,
                "endpoint_id": index + 1,
                "endpoint_flags": flags,
            }
        )

    sysctls = {
        "net/mptcp/enabled": "1",
        "net/ipv4/ip_forward": "1",
        "net/ipv4/conf/all/rp_filter": "2",
        # ECMP (load-balance) spreads connections by their ports, not only their addresses.
        "net/ipv4/fib_multipath_hash_policy": "1",
        # A WAN that lost its carrier keeps its DHCP default route in the main table: without this,
        # the box's own connections (the agent's session to the backend) would still pick it.
        "net/ipv4/conf/all/ignore_routes_with_linkdown": "1",
        # MPTCP marks a subflow stale after this many retransmission timeouts in a row and sends on
        # the backups meanwhile: on a shaped access link that is merely full (its queue drops), the
        # default 4 put ~8 % of a failover box's upload on its backup link (measured in the lab).
        # Links that die are taken out by the agent within a second, so stale detection can be slow.
        "net/mptcp/stale_loss_cnt": "16",
    }
    for wan in wans:
        sysctls[f"net/ipv4/conf/{wan['device']}/rp_filter"] = "2"

    rules: List[Dict[str, Any]] = []
    routes: List[Dict[str, Any]] = []
    endpoints: List[Dict[str, Any]] = []
    for wan in wans:
        if wan["role"] == WAN_ROLE_DISABLED or not wan["address"]:
            continue
        rules.append({"pref": wan["rule_pref"], "from": wan["address"], "table": wan["table"]})
        routes.append(
            {"table": wan["table"], "dst": "default", "type": "unreachable", "metric": UNREACHABLE_METRIC}
        )
        if wan["up"]:
            routes.append({"table": wan["table"], "dst": "default", **_route_to(wan)})
            if wan["endpoint_flags"] is not None:
                endpoints.append(
                    {
                        "id": wan["endpoint_id"],
                        "address": wan["address"],
                        "dev": wan["device"],
                        "flags": list(wan["endpoint_flags"]),
                        "wan": wan["name"],
                    }
                )
    subflow_wans = [w for w in wans if w["endpoint_flags"] is not None]
    mptcp = {
        "limits": {"subflows": min(MPTCP_MAX_SUBFLOWS, len(subflow_wans)), "add_addr_accepted": 0},
        "endpoints": endpoints,
    }

    server = config.get("server") if isinstance(config.get("server"), dict) else None
    server_ip = (
        _ipv4(server["public_ipv4"], "server.public_ipv4") if server and server.get("public_ipv4") else None
    )
    server_port = _port(server.get("port"), "server.port") if server and server_ip else None
    server_route = _server_route(mode, wans, server_ip) if server_ip else None
    public_ipv4 = _ipv4(config["public_ipv4"], "public_ipv4") if config.get("public_ipv4") else None
    credentials = config.get("credentials") if isinstance(config.get("credentials"), dict) else {}

    ss_redir: Optional[Dict[str, Any]] = None
    shadowsocks = credentials.get("shadowsocks") if isinstance(credentials, dict) else None
    if server_ip and server_port and isinstance(shadowsocks, dict):
        password, method = shadowsocks.get("password"), shadowsocks.get("method")
        if not isinstance(password, str) or not password:
            raise PlanError("credentials.shadowsocks.password", "must be a non-empty string")
        if not isinstance(method, str) or not method:
            raise PlanError("credentials.shadowsocks.method", "must be a non-empty string")
        path = os.path.join(state_dir, SS_REDIR_CONFIG_FILE)
        ss_redir = {
            "config_file": path,
            "config": {
                "server": server_ip,
                "server_port": server_port,
                "local_address": "0.0.0.0",  # noqa: S104 - LAN connections are redirected to it
                "local_port": SS_REDIR_PORT,
                "password": password,
                "method": method,
                "mode": "tcp_only",
                "timeout": SS_REDIR_TIMEOUT_S,
            },
            "argv": ["ss-redir", "-c", path, "--mptcp"],
        }

    wireguard: Optional[Dict[str, Any]] = None
    tunnel = config.get("tunnel") if isinstance(config.get("tunnel"), dict) else None
    server_key = server.get("wg_public_key") if server else None
    if server_ip and server_port and tunnel and isinstance(server_key, str) and server_key:
        box_address = _ipv4(tunnel.get("box_address"), "tunnel.box_address")
        length = 31
        prefix = tunnel.get("prefix")
        if prefix:
            try:
                length = ipaddress.IPv4Network(prefix, strict=False).prefixlen
            except ValueError as e:
                raise PlanError("tunnel.prefix", "must be an IPv4 prefix") from e
        wg_creds = credentials.get("wireguard") if isinstance(credentials, dict) else None
        psk = wg_creds.get("preshared_key") if isinstance(wg_creds, dict) else None
        addresses = [f"{box_address}/{length}"]
        if public_ipv4:
            addresses.append(f"{public_ipv4}/32")
        wireguard = {
            "interface": tunnel_interface,
            "argv": ["wireguard-go", "-f", tunnel_interface],
            "private_key_file": os.path.join(state_dir, WG_PRIVATE_KEY_FILE),
            "addresses": addresses,
            "peer": {
                "public_key": server_key,
                "preshared_key": psk if isinstance(psk, str) and psk else None,
                "preshared_key_file": os.path.join(state_dir, WG_PRESHARED_KEY_FILE),
                "endpoint": f"{server_ip}:{server_port}",
                "allowed_ips": list(WG_ALLOWED_IPS),
                "persistent_keepalive": WG_KEEPALIVE_S,
            },
        }
        routes.append({"table": LAN_TABLE, "dst": "default", "dev": tunnel_interface})
        if public_ipv4:
            rules.append({"pref": PUBLIC_RULE_PREF, "from": public_ipv4, "table": LAN_TABLE})
        rules.append({"pref": LOCAL_RULE_PREF, "iif": "lo", "table": "main"})
        rules.append({"pref": TUNNEL_IN_RULE_PREF, "iif": tunnel_interface, "table": "main"})
        for wan in wans:
            rules.append(
                {"pref": WAN_IN_RULE_PREF_BASE + wan["index"], "iif": wan["device"], "table": "main"}
            )
        rules.append({"pref": MAIN_SPECIFIC_RULE_PREF, "table": "main", "suppress_prefixlength": 0})
        rules.append({"pref": LAN_RULE_PREF, "table": LAN_TABLE})

    forwards = _port_forwards(config)
    nft: Optional[Dict[str, Any]] = None
    if ss_redir or wireguard:
        text = _nft_ruleset(
            wan_devices=[w["device"] for w in wans],
            tunnel=tunnel_interface if wireguard else None,
            direct=_direct(direct_networks, wireguard["addresses"][0] if wireguard else None),
            redirect=ss_redir is not None,
            public_ipv4=public_ipv4,
            forwards=forwards,
        )
        digest = hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]
        nft = {"family": NFT_FAMILY, "table": NFT_TABLE, "marker": f"otb-plan {digest}", "ruleset": text}

    plan: Dict[str, Any] = {
        "version": PLAN_VERSION,
        "config_hash": config.get("config_hash"),
        "mode": mode,
        "sysctls": sysctls,
        "wans": wans,
        "rules": rules,
        "routes": routes,
        "server_route": server_route,
        "server_ip": server_ip,
        "mptcp": mptcp,
        "ss_redir": ss_redir,
        "wireguard": wireguard,
        "nft": nft,
        "port_forwards": forwards if wireguard and public_ipv4 else [],
        "managed": {
            "tables": [WAN_TABLE_BASE + i for i in range(WAN_MAX)] + [LAN_TABLE],
            "rule_prefs": [
                [WAN_RULE_PREF_BASE, WAN_RULE_PREF_BASE + WAN_MAX - 1],
                [PUBLIC_RULE_PREF, LAN_RULE_PREF],
            ],
        },
    }
    return plan


def plan_json(plan: Dict[str, Any]) -> str:
    """The plan as ``otb-agent plan`` prints it."""
    return json.dumps(plan, indent=2, sort_keys=True)
