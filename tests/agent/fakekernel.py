"""A simulated Linux box for the data-plane applier's tests: it answers the applier's reads (``ip -j``,
``wg show``, ``nft -j``) from its state and changes that state on the applier's writes, recording
every command. A command it does not know fails the test (the applier must not run it)."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

SERVER_KEY = "c2VydmVyLWtleS0zMi1ieXRlcy1sb25nLi4uLi4uLi4="
PSK = "cHNrLWtleS0zMi1ieXRlcy1sb25nLi4uLi4uLi4uLi4="
BOX_CONFIG: dict[str, Any] = {
    "config_hash": "h1",
    "box": {"id": "b1", "serial": "BOX1", "name": "box"},
    "server": {
        "name": "agg1",
        "host": "agg1.example.net",
        "public_ipv4": "203.0.113.10",
        "port": 40001,
        "protocol": "wireguard",
        "wg_public_key": SERVER_KEY,
    },
    "credentials": {
        "wireguard": {"preshared_key": PSK, "box_public_key": "Ym94LWtleQ=="},
        "glorytun": None,
        "shadowsocks": {"password": "s3cret-pw", "method": "chacha20-ietf-poly1305"},
    },
    "tunnel": {"box_address": "100.64.0.1", "server_address": "100.64.0.0", "prefix": "100.64.0.0/31"},
    "public_ipv4": "198.51.100.5",
    "ipv6_prefix": "2001:db8:100::/56",
    "wan_policy": {
        "mode": "aggregate",
        "interfaces": [
            {"name": "wan1", "role": "primary", "kind": "fiber"},
            {"name": "wan2", "role": "primary", "kind": "lte"},
            {"name": "wan3", "role": "backup", "kind": "lte"},
            {"name": "wan4", "role": "disabled", "kind": "other"},
        ],
    },
    "port_forwards": [{"proto": "tcp", "port": 8080, "to_address": "192.168.50.10", "to_port": 80}],
    "telemetry_interval_s": 10,
}

LINKS = {
    "wan1": {"up": True, "address": "10.0.1.2", "gateway": "10.0.1.1"},
    "wan2": {"up": True, "address": "10.0.2.2", "gateway": "10.0.2.1"},
    "wan3": {"up": True, "address": "10.0.3.2", "gateway": "10.0.3.1"},
    "wan4": {"up": True, "address": "10.0.4.2", "gateway": "10.0.4.1"},
}


def box_config(
    mode: str | None = None, roles: dict[str, str] | None = None, **changes: Any
) -> dict[str, Any]:
    """The test box's config document, with another mode, other roles or other top-level values."""
    config = copy.deepcopy(BOX_CONFIG)
    if mode:
        config["wan_policy"]["mode"] = mode
    for itf in config["wan_policy"]["interfaces"]:
        itf["role"] = (roles or {}).get(itf["name"], itf["role"])
    config.update(changes)
    return config


def links(**overrides: dict[str, Any]) -> dict[str, dict[str, Any]]:
    out = copy.deepcopy(LINKS)
    for name, link in overrides.items():
        out[name] = {**out[name], **link}
    return out


class FakeProc:
    """A child process that runs until it is terminated (or made to die)."""

    _next_pid = 1000

    def __init__(self, argv, kernel):
        FakeProc._next_pid += 1
        self.pid = FakeProc._next_pid
        self.argv = argv
        self.returncode = None
        self.kernel = kernel

    def poll(self):
        return self.returncode

    def die(self, code=1):
        self.returncode = code
        self.kernel.daemon_exited(self)

    def terminate(self):
        self.die(0)

    def kill(self):
        self.die(-9)

    def wait(self, timeout=None):
        return self.returncode


class FakeKernel:
    """The state of one box: rules, routes (per table), MPTCP limits and endpoints, WireGuard
    interfaces (created by a started wireguard-go), interface addresses and nftables."""

    def __init__(self, root: Path, links: dict[str, dict[str, Any]]):
        self.root = root
        self.calls: list[str] = []
        self.spawned: list[FakeProc] = []
        self.rules: list[dict[str, Any]] = [
            {"priority": 0, "src": "all", "table": "local"},
            {"priority": 32766, "src": "all", "table": "main"},
        ]
        self.routes: list[dict[str, Any]] = []
        self.limits = {"add_addr_accepted": 0, "subflows": 2}
        self.endpoints: dict[int, dict[str, Any]] = {}
        self.wg: dict[str, dict[str, Any]] = {}
        self.addrs: dict[str, list[str]] = {}
        self.up: set[str] = set()
        self.nft: dict[str, Any] | None = None
        self.fail: dict[str, str] = {}  # command prefix -> stderr of a failure
        self.links = links
        self.main_routes: list[dict[str, Any]] = []  # static routes the box's owner added
        for key in ("net/mptcp/enabled", "net/ipv4/ip_forward", "net/ipv4/conf/all/rp_filter",
                    "net/ipv4/fib_multipath_hash_policy", "net/ipv4/conf/all/ignore_routes_with_linkdown",
                    "net/mptcp/stale_loss_cnt"):  # fmt: skip
            self.sysctl_file(key).write_text("0\n")
        for name, link in links.items():
            self.sysctl_file(f"net/ipv4/conf/{name}/rp_filter").write_text("0\n")
            self.set_link(name, **link)

    # -- the box's outside world
    def sysctl_file(self, key: str) -> Path:
        path = self.root / "proc" / "sys" / key
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def set_link(
        self, name: str, *, up: bool, address: str | None = None, gateway: str | None = None
    ) -> None:
        d = self.root / "sys" / "class" / "net" / name
        d.mkdir(parents=True, exist_ok=True)
        (d / "operstate").write_text("up\n" if up else "down\n")
        (d / "carrier").write_text("1\n" if up else "0\n")
        self.links[name] = {"up": up, "address": address, "gateway": gateway}
        if not up:  # the kernel drops the routes through a link that went down
            self.routes = [r for r in self.routes if r.get("dev") != name]

    # -- children
    def spawner(self, argv, log_path):
        proc = FakeProc(list(argv), self)
        self.spawned.append(proc)
        Path(log_path).write_text(f"started {' '.join(argv)}\n")
        if argv[0] == "wireguard-go":
            self.wg[argv[-1]] = {"private_key": None, "peers": {}}
            self.addrs[argv[-1]] = []
        return proc

    def daemon_exited(self, proc):
        if proc.argv[0] == "wireguard-go":
            itf = proc.argv[-1]
            self.wg.pop(itf, None)
            self.addrs.pop(itf, None)
            self.up.discard(itf)
            self.routes = [r for r in self.routes if r.get("dev") != itf]

    def running(self, program: str) -> list[FakeProc]:
        return [p for p in self.spawned if p.argv[0] == program and p.returncode is None]

    # -- what the applier sees
    def changes(self) -> list[str]:
        """The commands that change something (reads left out)."""
        return [c for c in self.calls if not _is_read(c)]

    def __call__(self, argv, stdin=None):
        line = " ".join(argv)
        self.calls.append(line)
        for prefix, err in self.fail.items():
            if line.startswith(prefix):
                return 2, "", err
        try:
            return self._run(list(argv), stdin)
        except KeyError as e:
            raise AssertionError(f"unexpected command: {line}") from e

    def _run(self, a: list[str], stdin: str | None) -> tuple[int, str, str]:
        ok = (0, "", "")
        if a[:5] == ["ip", "-4", "-j", "addr", "show"] and len(a) == 5:
            out = []
            for name, link in self.links.items():
                info = [{"family": "inet", "local": link["address"], "prefixlen": 24, "scope": "global"}]
                out.append(
                    {
                        "ifname": name,
                        "flags": ["BROADCAST", "UP"],
                        "addr_info": info if link["address"] else [],
                    }
                )
            return 0, json.dumps(out), ""
        if a[:6] == ["ip", "-4", "-j", "addr", "show", "dev"]:
            itf = a[6]
            if itf not in self.addrs:
                return 1, "", f'Device "{itf}" does not exist.'
            info = [
                {"family": "inet", "local": x.split("/")[0], "prefixlen": int(x.split("/")[1])}
                for x in self.addrs[itf]
            ]
            flags = ["POINTOPOINT", "UP"] if itf in self.up else ["POINTOPOINT"]
            return 0, json.dumps([{"ifname": itf, "flags": flags, "addr_info": info}]), ""
        if a == ["ip", "-4", "-j", "route", "show", "table", "main"]:
            main = [
                {"dst": "default", "gateway": link["gateway"], "dev": name}
                for name, link in self.links.items()
                if link["up"] and link.get("gateway")
            ]
            main += [
                {"dst": link["address"].rsplit(".", 1)[0] + ".0/24", "dev": name, "protocol": "kernel"}
                for name, link in self.links.items()
                if link["up"] and link.get("address")
            ]
            main += [{"dst": "192.168.50.0/24", "dev": "lan0", "protocol": "kernel"}, *self.main_routes]
            main += [r for r in self.routes if r.get("table", "main") == "main"]
            return 0, json.dumps(main), ""
        if a == ["ip", "-4", "-j", "route", "show", "table", "all"]:
            return 0, json.dumps(self.routes), ""
        if a[:4] == ["ip", "-4", "route", "replace"] or a[:4] == ["ip", "-4", "route", "del"]:
            route = _parse_route(a[4:])
            same = [r for r in self.routes if _route_id(r) == _route_id(route)]
            if a[3] == "del":
                if not same:
                    return 2, "", "RTNETLINK answers: No such process"
                self.routes.remove(same[0])
                return ok
            if route.get("dev") and route["dev"] not in self.links and route["dev"] not in self.up:
                return 2, "", "Error: Nexthop device is not up."
            for r in same:
                self.routes.remove(r)
            self.routes.append(route)
            return ok
        if a == ["ip", "-4", "-j", "rule", "show"]:
            return 0, json.dumps(sorted(self.rules, key=lambda r: r["priority"])), ""
        if a[:4] in (["ip", "-4", "rule", "add"], ["ip", "-4", "rule", "del"]):
            rule = _parse_rule(a[4:])
            if a[3] == "add":
                self.rules.append(rule)
            else:
                self.rules.remove(rule)
            return ok
        if a == ["ip", "mptcp", "limits", "show"]:
            return (
                0,
                f"add_addr_accepted {self.limits['add_addr_accepted']} subflows {self.limits['subflows']} \n",
                "",
            )
        if a[:4] == ["ip", "mptcp", "limits", "set"]:
            self.limits = {a[4]: int(a[5]), a[6]: int(a[7])}
            return ok
        if a == ["ip", "-j", "mptcp", "endpoint", "show"]:
            endpoints: list[dict[str, Any]] = []
            for ep_id, ep in sorted(self.endpoints.items()):
                endpoints.append(
                    {
                        "address": ep["address"],
                        "id": ep_id,
                        **{f: True for f in ep["flags"]},
                        "dev": ep["dev"],
                    }
                )
            return 0, json.dumps(endpoints), ""
        if a[:4] == ["ip", "mptcp", "endpoint", "add"]:
            ep_id = int(a[a.index("id") + 1])
            assert ep_id not in self.endpoints, f"endpoint id {ep_id} exists"
            self.endpoints[ep_id] = {"address": a[4], "dev": a[6], "flags": a[a.index("id") + 2 :]}
            return ok
        if a[:4] == ["ip", "mptcp", "endpoint", "delete"]:
            del self.endpoints[int(a[5])]
            return ok
        if a[:4] == ["ip", "mptcp", "endpoint", "change"]:
            ep = self.endpoints[int(a[5])]
            flags = [f for f in ep["flags"] if f != "backup"]
            ep["flags"] = flags + (["backup"] if a[6] == "backup" else [])
            return ok
        if a[:2] == ["wg", "show"]:
            itf = a[2]
            if itf not in self.wg:
                return 1, "", f"Unable to access interface: {itf}"
            st = self.wg[itf]
            lines = [f"{st['private_key'] or '(none)'}\tPUB\t51820\toff"]
            for key, p in st["peers"].items():
                psk = p["psk"] or "(none)"
                lines.append(f"{key}\t{psk}\t{p['endpoint']}\t{p['allowed']}\t0\t0\t0\t{p['keepalive']}")
            return 0, "\n".join(lines) + "\n", ""
        if a[:2] == ["wg", "set"]:
            st = self.wg[a[2]]
            if a[3] == "private-key":
                st["private_key"] = Path(a[4]).read_text().strip()
                return ok
            key = a[4]
            if a[5] == "remove":
                del st["peers"][key]
                return ok
            opts = dict(zip(a[5::2], a[6::2]))
            psk_file = opts["preshared-key"]
            st["peers"][key] = {
                "psk": None if psk_file == "/dev/null" else Path(psk_file).read_text().strip(),
                "endpoint": opts["endpoint"],
                "allowed": opts["allowed-ips"],
                "keepalive": opts["persistent-keepalive"],
            }
            return ok
        if a[:3] == ["ip", "addr", "add"] or a[:3] == ["ip", "addr", "del"]:
            addrs = self.addrs[a[5]]
            if a[2] == "add":
                addrs.append(a[3])
            else:
                addrs.remove(a[3])
            return ok
        if a[:3] == ["ip", "link", "set"] and a[4:] == ["up"]:
            self.up.add(a[3])
            return ok
        if a == ["nft", "-j", "list", "table", "inet", "otb_box"]:
            if self.nft is None:
                return 1, "", "Error: No such file or directory"
            items: list[dict[str, Any]] = [{"table": {"family": "inet", "name": "otb_box"}}]
            for name, (packets, nbytes) in self.nft["counters"].items():
                items.append({"counter": {"name": name, "packets": packets, "bytes": nbytes}})
            items.append({"rule": {"chain": "plan", "comment": self.nft["marker"]}})
            return 0, json.dumps({"nftables": items}), ""
        if a == ["nft", "-f", "-"]:
            assert stdin and "delete table inet otb_box" in stdin
            marker = stdin.split('return comment "', 1)[1].split('"', 1)[0]
            counters = {}
            lines = stdin.splitlines()
            for i, text in enumerate(lines):
                if text.strip().startswith("counter ") and text.strip().endswith("{"):
                    nxt = lines[i + 1].split()
                    counters[text.split()[1]] = (int(nxt[1]), int(nxt[3])) if nxt[0] == "packets" else (0, 0)
            self.nft = {"marker": marker, "counters": counters, "text": stdin}
            return ok
        if a == ["nft", "delete", "table", "inet", "otb_box"]:
            self.nft = None
            return ok
        raise KeyError(a[0])


def _is_read(line: str) -> bool:
    words = line.split()
    return "show" in words or line.startswith("nft -j list") or (words[:2] == ["wg", "show"])


def _parse_route(args: list[str]) -> dict[str, Any]:
    route: dict[str, Any] = {}
    if args[0] in ("unreachable", "blackhole"):
        route["type"] = args.pop(0)
    route["dst"] = args.pop(0)
    if route["dst"].endswith("/32"):
        route["dst"] = route["dst"][:-3]
    hops: list[dict[str, Any]] = []
    while args:
        word = args.pop(0)
        value = args.pop(0) if word != "nexthop" else ""
        if word == "nexthop":
            hops.append({})
        elif word == "via":
            (hops[-1] if hops else route)["gateway"] = value
        elif word == "dev":
            (hops[-1] if hops else route)["dev"] = value
        elif word == "weight":
            hops[-1]["weight"] = int(value)
        elif word == "metric":
            route["metric"] = int(value)
        elif word == "proto":
            route["protocol"] = value
        elif word == "table" and value != "main":
            route["table"] = value
    if hops:
        route["nexthops"] = hops
    return route


def _route_id(route: dict[str, Any]) -> tuple:
    return (route.get("table", "main"), route.get("dst"), route.get("metric"))


def _parse_rule(args: list[str]) -> dict[str, Any]:
    opts = dict(zip(args[::2], args[1::2]))
    rule: dict[str, Any] = {"priority": int(opts["pref"]), "src": opts.get("from", "all")}
    if "iif" in opts:
        rule["iif"] = opts["iif"]
    rule["table"] = opts["table"]
    if "suppress_prefixlength" in opts:
        rule["suppress_prefixlen"] = int(opts["suppress_prefixlength"])
    return rule
