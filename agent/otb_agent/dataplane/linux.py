"""The Linux applier: converges the kernel and the tunnel daemons to a plan, changing only what differs.

* :class:`LinkObserver` reads the WANs' state (``/sys`` operstate and carrier) and their address and
  gateway from the kernel (``ip -j addr``, the WAN's default route in the main table): DHCP owns
  them, the box only follows.
* :class:`Applier` reads the actual state (``ip -j rule/route/mptcp``, ``wg show``, ``nft -j``,
  ``/proc/sys``) and runs only the commands that make it match the plan: re-applying the same plan
  runs none.
* :class:`Supervisor` runs ``ss-redir`` and ``wireguard-go`` as children, restarts a dead one with
  a capped backoff, restarts a live one only when its settings changed, and stops them on exit.
* :class:`LinuxDataplane` is what the agent holds (``otb-agent run --apply linux``): it applies
  each new config, and watches the WANs (``/sys`` every 0.5 s, the kernel's addresses every 2 s):
  when a WAN goes down its MPTCP endpoint is deleted and the server route moves to the next
  preferred up link; when it comes back its routes and endpoint are added again.

Commands go through a *runner* (``argv, stdin -> (returncode, stdout, stderr)``) so that tests can
record them or replay a simulated kernel.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import subprocess
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from ..util import Logger, write_file_atomic
from .plan import NFT_FAMILY, NFT_TABLE, TUNNEL_INTERFACE, PlanError, plan_build

Runner = Callable[[Sequence[str], Optional[str]], Tuple[int, str, str]]

COMMAND_TIMEOUT = 15.0
WG_READY_TIMEOUT = 5.0
SERVER_ROUTE_PROTO = "111"  # marks the server route as the agent's in the main table
HANDSHAKE_STALE_S = 180.0  # WireGuard re-keys every 2 minutes: older means no session
SS_REDIR = "ss-redir"
WIREGUARD_GO = "wireguard-go"


def subprocess_runner(argv: Sequence[str], stdin: Optional[str] = None) -> Tuple[int, str, str]:
    """Run ``argv`` (no shell); a missing program is returncode 127."""
    try:
        p = subprocess.run(
            list(argv), input=stdin, capture_output=True, text=True, timeout=COMMAND_TIMEOUT, check=False
        )
    except FileNotFoundError:
        return 127, "", f"{argv[0]}: not found"
    except subprocess.TimeoutExpired:
        return 124, "", f"{' '.join(argv)}: timed out after {COMMAND_TIMEOUT:g}s"
    return p.returncode, p.stdout, p.stderr


class CommandError(RuntimeError):
    """A command of the apply failed; the message says which and why (the applied-config error)."""


def _read(path: str) -> Optional[str]:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return None


def link_up(root: str, dev: str) -> bool:
    """Whether ``dev`` has a usable link (``/sys/class/net``): operstate up (or unknown, as ppp and
    tun devices report, with carrier)."""
    base = os.path.join(root, "sys", "class", "net", dev)
    oper = (_read(os.path.join(base, "operstate")) or "").strip()
    carrier = (_read(os.path.join(base, "carrier")) or "").strip()
    if oper == "up":
        return carrier != "0"
    if oper == "unknown":
        return carrier == "1"
    return False


def _json(text: str) -> Any:
    try:
        return json.loads(text) if text.strip() else []
    except ValueError:
        return []


# ---------------------------------------------------------------------------- observation


class LinkObserver:
    """The WANs as the kernel has them: ``{name: {up, address, gateway, device}}``.

    A WAN is up when its link is (``/sys``) and it holds an IPv4 address and, unless it is a
    point-to-point device, a gateway is known: the device's default route in the main table (put
    there by the DHCP client), else the last one seen with the same address (a link that went down
    lost its routes, and nobody re-adds the main default route of a static WAN)."""

    def __init__(self, runner: Runner, root: str = "/", tunnel_interface: Optional[str] = None) -> None:
        self.runner = runner
        self.root = root
        self.tunnel_interface = tunnel_interface  # its routes come and go with wireguard-go: not observed
        self._gateways: Dict[Tuple[str, str], str] = {}
        #: The destinations of the main table's specific routes, as last observed (the plan's
        #: ``direct_networks``): connected subnets, static routes; not the agent's server route.
        self.direct_networks: List[str] = []

    def link_states(self, devices: Sequence[str]) -> Dict[str, bool]:
        return {dev: link_up(self.root, dev) for dev in devices}

    def observe(self, wans: Sequence[Tuple[str, str]]) -> Dict[str, Dict[str, Any]]:
        """``wans`` is ``[(name, device)]``."""
        rc, out, _ = self.runner(["ip", "-4", "-j", "addr", "show"], None)
        addrs: Dict[str, Tuple[Optional[str], bool]] = {}
        for itf in _json(out) if rc == 0 else []:
            if not isinstance(itf, dict):
                continue
            address = next(
                (
                    a.get("local")
                    for a in itf.get("addr_info") or []
                    if a.get("family") == "inet" and a.get("scope") == "global" and a.get("local")
                ),
                None,
            )
            addrs[str(itf.get("ifname"))] = (address, "POINTOPOINT" in (itf.get("flags") or []))
        rc, out, _ = self.runner(["ip", "-4", "-j", "route", "show", "table", "main"], None)
        gateways: Dict[str, str] = {}
        direct = set()
        for route in _json(out) if rc == 0 else []:
            if not isinstance(route, dict):
                continue
            if route.get("dst") != "default":
                ours = (
                    str(route.get("protocol")) == SERVER_ROUTE_PROTO
                    or route.get("dev") == self.tunnel_interface
                )
                if route.get("type", "unicast") == "unicast" and not ours:
                    dst = str(route.get("dst"))
                    direct.add(dst if "/" in dst else f"{dst}/32")
                continue
            if route.get("gateway") and route.get("dev"):
                gateways.setdefault(str(route["dev"]), str(route["gateway"]))
            for hop in route.get("nexthops") or []:
                if hop.get("gateway") and hop.get("dev"):
                    gateways.setdefault(str(hop["dev"]), str(hop["gateway"]))
        if rc == 0:
            self.direct_networks = sorted(direct)
        links: Dict[str, Dict[str, Any]] = {}
        for name, dev in wans:
            address, p2p = addrs.get(dev, (None, False))
            gateway = gateways.get(dev)
            if address and gateway:
                self._gateways[(dev, address)] = gateway
            elif address:
                gateway = self._gateways.get((dev, address))
            up = link_up(self.root, dev) and address is not None and (gateway is not None or p2p)
            links[name] = {"up": up, "address": address, "gateway": gateway, "device": dev}
        return links


# ---------------------------------------------------------------------------- children


class Child:
    """One supervised daemon."""

    def __init__(self, name: str, argv: List[str], fingerprint: str) -> None:
        self.name = name
        self.argv = argv
        self.fingerprint = fingerprint
        self.proc: Optional[Any] = None
        self.started_at = 0.0
        self.next_start = 0.0
        self.delay = 0.0
        self.starts = 0


Spawner = Callable[[List[str], str], Any]


def popen_spawner(argv: List[str], log_path: str) -> Any:
    """Start a daemon in the foreground, its output in ``log_path`` (truncated at each start)."""
    with open(log_path, "wb") as log:
        return subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )


class Supervisor:
    """Keeps the data plane's daemons running: a dead one is restarted after 1 s, doubling up to
    30 s while it keeps dying (reset after a minute up); a live one is restarted only when its
    fingerprint (its settings) changes."""

    BACKOFF_BASE = 1.0
    BACKOFF_CAP = 30.0
    STABLE_AFTER = 60.0

    def __init__(
        self, log_dir: str, spawner: Spawner = popen_spawner, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.log_dir = log_dir
        self.spawner = spawner
        self.clock = clock
        self.children: Dict[str, Child] = {}

    def alive(self, name: str) -> bool:
        child = self.children.get(name)
        return child is not None and child.proc is not None and child.proc.poll() is None

    def log_tail(self, name: str, lines: int = 5) -> str:
        text = _read(os.path.join(self.log_dir, f"{name}.log")) or ""
        return " | ".join(line.strip() for line in text.strip().splitlines()[-lines:] if line.strip())

    def _start(self, child: Child) -> None:
        child.proc = self.spawner(child.argv, os.path.join(self.log_dir, f"{child.name}.log"))
        child.started_at = self.clock()
        child.starts += 1

    def ensure(self, name: str, argv: List[str], fingerprint: str) -> bool:
        """Run ``argv`` as ``name``; True when it was (re)started now."""
        child = self.children.get(name)
        if child is not None and child.fingerprint == fingerprint and child.argv == argv:
            if self.alive(name):
                return False
            if self.clock() < child.next_start:
                return False  # dying repeatedly: poll() restarts it after its backoff
            self._start(child)
            return True
        if child is not None:
            self._terminate(child)
        child = Child(name, list(argv), fingerprint)
        self.children[name] = child
        self._start(child)
        return True

    def poll(self) -> List[str]:
        """Restart the children that died (after their backoff); the names restarted."""
        restarted = []
        now = self.clock()
        for child in self.children.values():
            if child.proc is None or child.proc.poll() is None:
                continue
            if child.next_start <= child.started_at:  # its death was not seen yet
                up_for = now - child.started_at
                child.delay = (
                    self.BACKOFF_BASE
                    if up_for >= self.STABLE_AFTER or not child.delay
                    else min(self.BACKOFF_CAP, child.delay * 2)
                )
                child.next_start = now + child.delay
            if now >= child.next_start:
                self._start(child)
                restarted.append(child.name)
        return restarted

    def stop(self, name: str) -> bool:
        child = self.children.pop(name, None)
        if child is None:
            return False
        self._terminate(child)
        return True

    def stop_all(self) -> None:
        for name in list(self.children):
            self.stop(name)

    @staticmethod
    def _terminate(child: Child) -> None:
        proc = child.proc
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=3)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=3)


# ---------------------------------------------------------------------------- state parsing


def _rule_key(rule: Dict[str, Any]) -> Tuple[Any, ...]:
    """(pref, from, iif, table, suppress_prefixlength) of a plan rule or an ``ip -j rule`` entry."""
    pref = rule.get("pref", rule.get("priority"))
    src = rule.get("from", rule.get("src"))
    if src == "all":
        src = None
    suppress = rule.get("suppress_prefixlength", rule.get("suppress_prefixlen"))
    return (int(pref) if pref is not None else None, src, rule.get("iif"), str(rule.get("table")), suppress)


def _rule_args(key: Tuple[Any, ...]) -> List[str]:
    pref, src, iif, table, suppress = key
    args = ["pref", str(pref)]
    if src:
        args += ["from", src]
    if iif:
        args += ["iif", iif]
    args += ["table", table]
    if suppress is not None:
        args += ["suppress_prefixlength", str(suppress)]
    return args


def _route_key(route: Dict[str, Any]) -> Tuple[Any, ...]:
    """(table, type, dst, via, dev, metric) of a plan route or an ``ip -j route`` entry."""
    return (
        str(route.get("table", "main")),
        route.get("type", "unicast"),
        route.get("dst"),
        route.get("via", route.get("gateway")),
        route.get("dev"),
        route.get("metric") or None,
    )


def _route_args(key: Tuple[Any, ...]) -> List[str]:
    table, kind, dst, via, dev, metric = key
    args = [] if kind == "unicast" else [kind]
    args.append(dst)
    if via:
        args += ["via", via]
    if dev:
        args += ["dev", dev]
    if metric:
        args += ["metric", str(metric)]
    return [*args, "table", table]


def _hops_key(route: Dict[str, Any]) -> Tuple[Tuple[Any, ...], ...]:
    hops = route.get("nexthops") or [route]
    multi = len(hops) > 1
    return tuple(
        sorted(
            (
                h.get("via", h.get("gateway")) or "",
                h.get("dev") or "",
                int(h.get("weight") or 1) if multi else 1,
            )
            for h in hops
        )
    )


def _server_route_args(route: Dict[str, Any]) -> List[str]:
    hops = route["nexthops"]
    args = [route["dst"], "proto", SERVER_ROUTE_PROTO]
    if len(hops) == 1:
        hop = hops[0]
        return args + (["via", hop["via"]] if hop.get("via") else []) + ["dev", hop["dev"]]
    for hop in hops:
        args.append("nexthop")
        if hop.get("via"):
            args += ["via", hop["via"]]
        args += ["dev", hop["dev"], "weight", str(hop.get("weight", 1))]
    return args


def parse_mptcp_limits(text: str) -> Dict[str, int]:
    """``ip mptcp limits show`` (``add_addr_accepted 0 subflows 2``) -> {name: value}."""
    parts = text.split()
    out = {}
    for name, value in zip(parts[::2], parts[1::2]):
        if value.isdigit():
            out[name] = int(value)
    return out


def _endpoint_flags(ep: Dict[str, Any]) -> Tuple[str, ...]:
    if isinstance(ep.get("flags"), list):
        return tuple(sorted(ep["flags"]))
    return tuple(sorted(f for f in ("signal", "subflow", "backup", "fullmesh") if ep.get(f)))


def parse_wg_dump(text: str) -> Dict[str, Any]:
    """``wg show IF dump`` -> {private_key, listen_port, peers: {public_key: {...}}}"""
    lines = [line.split("\t") for line in text.splitlines() if line.strip()]
    if not lines:
        return {}
    head = lines[0]
    out: Dict[str, Any] = {"private_key": head[0] if head and head[0] != "(none)" else None, "peers": {}}
    for f in lines[1:]:
        if len(f) < 8:
            continue
        out["peers"][f[0]] = {
            "preshared_key": None if f[1] == "(none)" else f[1],
            "endpoint": None if f[2] == "(none)" else f[2],
            "allowed_ips": sorted(x for x in f[3].split(",") if x and x != "(none)"),
            "latest_handshake": int(f[4]) if f[4].isdigit() else 0,
            "rx_bytes": int(f[5]) if f[5].isdigit() else 0,
            "tx_bytes": int(f[6]) if f[6].isdigit() else 0,
            "persistent_keepalive": None if f[7] == "off" else (int(f[7]) if f[7].isdigit() else None),
        }
    return out


def nft_marker_and_counters(doc: Any) -> Tuple[Optional[str], Dict[str, Tuple[int, int]]]:
    """From ``nft -j list table``: the plan marker (the comment of the ``plan`` chain's rule) and
    the named counters {name: (packets, bytes)}."""
    marker = None
    counters: Dict[str, Tuple[int, int]] = {}
    items = doc.get("nftables") if isinstance(doc, dict) else None
    for item in items or []:
        if not isinstance(item, dict):
            continue
        rule = item.get("rule")
        if isinstance(rule, dict) and rule.get("chain") == "plan" and rule.get("comment"):
            marker = str(rule["comment"])
        counter = item.get("counter")
        if isinstance(counter, dict) and counter.get("name"):
            counters[str(counter["name"])] = (
                int(counter.get("packets") or 0),
                int(counter.get("bytes") or 0),
            )
    return marker, counters


def nft_document(ruleset: str, marker: str, counters: Dict[str, Tuple[int, int]]) -> str:
    """The ``nft -f`` input replacing table ``inet otb_box`` atomically, its counters carried over."""
    body: List[str] = []
    for line in ruleset.rstrip("\n").split("\n")[:-1]:  # the table's closing brace comes last
        body.append(line)
        stripped = line.strip()
        if stripped.startswith("counter ") and stripped.endswith("{"):
            name = stripped.split()[1]
            if name in counters:
                packets, nbytes = counters[name]
                body.append(f"\t\tpackets {packets} bytes {nbytes}")
    body += ["\tchain plan {", f'\t\treturn comment "{marker}"', "\t}", "}"]
    head = [f"table {NFT_FAMILY} {NFT_TABLE} {{", "}", f"delete table {NFT_FAMILY} {NFT_TABLE}"]
    return "\n".join(head + body) + "\n"


# ---------------------------------------------------------------------------- applier


class Applier:
    """Converges the kernel to a plan. :meth:`converge` returns the changing commands it ran (none
    when the kernel already matches) and raises :class:`CommandError` on the first failure."""

    def __init__(
        self,
        runner: Runner,
        supervisor: Supervisor,
        *,
        root: str = "/",
        wait_ready: Callable[[float], None] = time.sleep,
        ready_timeout: float = WG_READY_TIMEOUT,
    ) -> None:
        self.runner = runner
        self.supervisor = supervisor
        self.root = root
        self.sleep = wait_ready
        self.ready_timeout = ready_timeout
        self.changes: List[str] = []

    # -- commands
    def _query(self, argv: List[str], stdin: Optional[str] = None) -> Tuple[int, str]:
        rc, out, _ = self.runner(argv, stdin)
        return rc, out

    def _change(self, argv: List[str], stdin: Optional[str] = None) -> None:
        self.changes.append(" ".join(argv))
        rc, _, err = self.runner(argv, stdin)
        if rc != 0:
            detail = " ".join(err.strip().splitlines()[-3:]) or f"exit {rc}"
            raise CommandError(f"{' '.join(argv[:6])}{' ...' if len(argv) > 6 else ''}: {detail}")

    def _write_file(self, path: str, content: str) -> bool:
        if _read(path) == content:
            return False
        write_file_atomic(path, content, 0o600)
        self.changes.append(f"write {path}")
        return True

    # -- the plan
    def converge(self, plan: Dict[str, Any]) -> List[str]:
        self.changes = []
        self._sysctls(plan["sysctls"])
        self._wireguard(plan.get("wireguard"))
        self._routes(plan)
        self._rules(plan)
        self._mptcp(plan["mptcp"])
        self._nft(plan.get("nft"))
        self._ss_redir(plan.get("ss_redir"))
        return list(self.changes)

    def _sysctls(self, sysctls: Dict[str, str]) -> None:
        for key, value in sysctls.items():
            path = os.path.join(self.root, "proc", "sys", key)
            current = _read(path)
            if current is None:
                # A WAN device that does not exist yet: set when it appears (the next converge).
                if "/conf/" in key and not key.startswith("net/ipv4/conf/all/"):
                    continue
                raise CommandError(f"sysctl {key.replace('/', '.')}: not available on this kernel")
            if current.strip() == value:
                continue
            self.changes.append(f"sysctl -w {key}={value}")
            try:
                with open(path, "w", encoding="utf-8") as f:
                    f.write(value)
            except OSError as e:
                raise CommandError(f"sysctl {key.replace('/', '.')}={value}: {e.strerror or e}") from e

    def _wireguard(self, wg: Optional[Dict[str, Any]]) -> None:
        if wg is None:
            if self.supervisor.stop(WIREGUARD_GO):
                self.changes.append(f"stop {WIREGUARD_GO}")
            return
        itf = wg["interface"]
        argv = list(wg["argv"])
        if self.supervisor.ensure(WIREGUARD_GO, argv, " ".join(argv)):
            self.changes.append(f"start {' '.join(argv)}")
        dump = self._wg_dump(itf)
        if dump is None:
            output = self.supervisor.log_tail(WIREGUARD_GO) or "no output"
            raise CommandError(f"{WIREGUARD_GO} did not bring up {itf}: {output}")
        private_key = (_read(wg["private_key_file"]) or "").strip()
        if not private_key:
            raise CommandError(f"no WireGuard private key in {wg['private_key_file']} (enroll the box first)")
        if dump.get("private_key") != private_key:
            self._change(["wg", "set", itf, "private-key", wg["private_key_file"]])
        peer = wg["peer"]
        psk = peer.get("preshared_key")
        if psk:
            self._write_file(peer["preshared_key_file"], psk + "\n")
        want = {
            "preshared_key": psk,
            "endpoint": peer["endpoint"],
            "allowed_ips": sorted(peer["allowed_ips"]),
            "persistent_keepalive": peer["persistent_keepalive"],
        }
        for key in list(dump.get("peers", {})):
            if key != peer["public_key"]:
                self._change(["wg", "set", itf, "peer", key, "remove"])
        have = dump.get("peers", {}).get(peer["public_key"])
        if have is None or any(have.get(k) != v for k, v in want.items()):
            self._change(
                [
                    "wg",
                    "set",
                    itf,
                    "peer",
                    peer["public_key"],
                    "preshared-key",
                    peer["preshared_key_file"] if psk else "/dev/null",
                    "endpoint",
                    peer["endpoint"],
                    "persistent-keepalive",
                    str(peer["persistent_keepalive"]),
                    "allowed-ips",
                    ",".join(peer["allowed_ips"]),
                ]
            )
        rc, out = self._query(["ip", "-4", "-j", "addr", "show", "dev", itf])
        info = next((x for x in _json(out) if isinstance(x, dict)), {}) if rc == 0 else {}
        have_addrs = {
            f"{a['local']}/{a['prefixlen']}" for a in info.get("addr_info") or [] if a.get("family") == "inet"
        }
        for addr in sorted(have_addrs - set(wg["addresses"])):
            self._change(["ip", "addr", "del", addr, "dev", itf])
        for addr in wg["addresses"]:
            if addr not in have_addrs:
                self._change(["ip", "addr", "add", addr, "dev", itf])
        if "UP" not in (info.get("flags") or []):
            self._change(["ip", "link", "set", itf, "up"])

    def _wg_dump(self, itf: str) -> Optional[Dict[str, Any]]:
        """``wg show IF dump``, waiting for a daemon just started to open its control socket."""
        deadline = time.monotonic() + self.ready_timeout
        while True:
            rc, out = self._query(["wg", "show", itf, "dump"])
            if rc == 0:
                return parse_wg_dump(out)
            if time.monotonic() >= deadline or not self.supervisor.alive(WIREGUARD_GO):
                return None
            self.sleep(0.05)

    def _routes(self, plan: Dict[str, Any]) -> None:
        rc, out = self._query(["ip", "-4", "-j", "route", "show", "table", "all"])
        if rc != 0:
            raise CommandError("ip route show table all failed")
        managed = {str(t) for t in plan["managed"]["tables"]}
        have = set()
        server_routes = []
        server = plan.get("server_route")
        for route in _json(out):
            if not isinstance(route, dict):
                continue
            table = str(route.get("table", "main"))
            if table in managed:
                have.add(_route_key(route))
            elif table == "main" and str(route.get("protocol")) == SERVER_ROUTE_PROTO:
                server_routes.append(route)
        want = {_route_key(r) for r in plan["routes"]}
        for key in sorted(have - want, key=str):
            self._change(["ip", "-4", "route", "del", *_route_args(key)])
        for key in sorted(want - have, key=str):
            self._change(["ip", "-4", "route", "replace", *_route_args(key)])
        # The server route: ours carry protocol 111; one for another address is stale (a new server).
        for route in server_routes:
            dst = str(route.get("dst"))
            if server is None or f"{dst}/32" != server["dst"]:
                self._change(["ip", "-4", "route", "del", f"{dst}/32", "proto", SERVER_ROUTE_PROTO])
        if server is not None:
            current = next((r for r in server_routes if f"{r.get('dst')}/32" == server["dst"]), None)
            if current is None or _hops_key(current) != _hops_key(server):
                self._change(["ip", "-4", "route", "replace", *_server_route_args(server)])

    def _rules(self, plan: Dict[str, Any]) -> None:
        rc, out = self._query(["ip", "-4", "-j", "rule", "show"])
        if rc != 0:
            raise CommandError("ip rule show failed")
        ranges = plan["managed"]["rule_prefs"]
        have = set()
        for rule in _json(out):
            if isinstance(rule, dict) and any(lo <= int(rule.get("priority", -1)) <= hi for lo, hi in ranges):
                have.add(_rule_key(rule))
        want = {_rule_key(r) for r in plan["rules"]}
        for key in sorted(have - want, key=str):
            self._change(["ip", "-4", "rule", "del", *_rule_args(key)])
        for key in sorted(want - have, key=str):
            self._change(["ip", "-4", "rule", "add", *_rule_args(key)])

    def _mptcp(self, mptcp: Dict[str, Any]) -> None:
        rc, out = self._query(["ip", "mptcp", "limits", "show"])
        if rc != 0:
            raise CommandError("ip mptcp is not available (kernel without MPTCP, or iproute2 too old)")
        limits = parse_mptcp_limits(out)
        want_limits = mptcp["limits"]
        if any(limits.get(k) != v for k, v in want_limits.items()):
            self._change(
                [
                    "ip",
                    "mptcp",
                    "limits",
                    "set",
                    "subflows",
                    str(want_limits["subflows"]),
                    "add_addr_accepted",
                    str(want_limits["add_addr_accepted"]),
                ]
            )
        rc, out = self._query(["ip", "-j", "mptcp", "endpoint", "show"])
        have = (
            {int(ep["id"]): ep for ep in _json(out) if isinstance(ep, dict) and "id" in ep} if rc == 0 else {}
        )
        want = {int(ep["id"]): ep for ep in mptcp["endpoints"]}
        for ep_id in sorted(have):
            cur = have[ep_id]
            new = want.get(ep_id)
            if new is None:
                self._change(["ip", "mptcp", "endpoint", "delete", "id", str(ep_id)])
                continue
            same_place = cur.get("address") == new["address"] and cur.get("dev") == new["dev"]
            cur_flags, new_flags = _endpoint_flags(cur), tuple(sorted(new["flags"]))
            if same_place and cur_flags == new_flags:
                want.pop(ep_id)
            elif same_place and set(cur_flags) - {"backup"} == set(new_flags) - {"backup"}:
                # Only the backup flag differs: change it in place (MP_PRIO); subflows stay up.
                backup = "backup" if "backup" in new_flags else "nobackup"
                self._change(["ip", "mptcp", "endpoint", "change", "id", str(ep_id), backup])
                want.pop(ep_id)
            else:
                self._change(["ip", "mptcp", "endpoint", "delete", "id", str(ep_id)])
        for ep_id in sorted(want):
            ep = want[ep_id]
            self._change(
                [
                    "ip",
                    "mptcp",
                    "endpoint",
                    "add",
                    ep["address"],
                    "dev",
                    ep["dev"],
                    "id",
                    str(ep_id),
                    *ep["flags"],
                ]
            )

    def _nft(self, nft: Optional[Dict[str, Any]]) -> None:
        rc, out = self._query(["nft", "-j", "list", "table", NFT_FAMILY, NFT_TABLE])
        exists = rc == 0
        marker, counters = nft_marker_and_counters(_json(out) if exists else {})
        if nft is None:
            if exists:
                self._change(["nft", "delete", "table", NFT_FAMILY, NFT_TABLE])
            return
        if exists and marker == nft["marker"]:
            return
        self._change(["nft", "-f", "-"], nft_document(nft["ruleset"], nft["marker"], counters))

    def _ss_redir(self, ss: Optional[Dict[str, Any]]) -> None:
        if ss is None:
            if self.supervisor.stop(SS_REDIR):
                self.changes.append(f"stop {SS_REDIR}")
            return
        content = json.dumps(ss["config"], indent=2, sort_keys=True) + "\n"
        self._write_file(ss["config_file"], content)
        fingerprint = hashlib.sha256((content + " ".join(ss["argv"])).encode()).hexdigest()
        if self.supervisor.ensure(SS_REDIR, list(ss["argv"]), fingerprint):
            self.changes.append(f"start {' '.join(ss['argv'])}")


# ---------------------------------------------------------------------------- the agent's part


class LinuxDataplane:
    """The box's data plane as the agent runs it: applies each config (:meth:`apply_config`, the
    config cycle's applier) and follows the WANs' state (:meth:`run`)."""

    POLL_INTERVAL = 0.5
    OBSERVE_INTERVAL = 2.0
    RESYNC_INTERVAL = 30.0
    RETRY_INTERVAL = 5.0

    def __init__(
        self,
        *,
        state_dir: str,
        log: Optional[Logger] = None,
        runner: Runner = subprocess_runner,
        spawner: Spawner = popen_spawner,
        root: str = "/",
        tunnel_interface: str = TUNNEL_INTERFACE,
    ) -> None:
        self.state_dir = os.path.abspath(state_dir)
        self.log = log or Logger(level="warning")
        self.runner = runner
        self.root = root
        self.tunnel_interface = tunnel_interface
        self.observer = LinkObserver(runner, root, tunnel_interface)
        self.supervisor = Supervisor(state_dir, spawner)
        self.applier = Applier(runner, self.supervisor, root=root)
        self.config: Optional[Dict[str, Any]] = None
        self.plan: Optional[Dict[str, Any]] = None
        self.links: Dict[str, Dict[str, Any]] = {}
        self.last_error: Optional[str] = None
        self._lock: Optional[asyncio.Lock] = None  # made on the agent's loop (Python 3.9)

    # -- what the collector asks
    def proxy_alive(self) -> bool:
        """Whether ss-redir runs (the TCP half of the tunnel)."""
        return self.supervisor.alive(SS_REDIR)

    def _wans(self) -> List[Tuple[str, str]]:
        policy = (self.config or {}).get("wan_policy")
        interfaces = policy.get("interfaces") if isinstance(policy, dict) else None
        return [
            (str(i["name"]), str(i["name"]))
            for i in interfaces or []
            if isinstance(i, dict) and isinstance(i.get("name"), str)
        ]

    def _converge_blocking(self, links: Optional[Dict[str, Dict[str, Any]]] = None) -> List[str]:
        if self.config is None:
            return []
        if links is None:
            links = self.observer.observe(self._wans())
        self.links = links
        plan = plan_build(
            self.config,
            links,
            state_dir=self.state_dir,
            tunnel_interface=self.tunnel_interface,
            direct_networks=self.observer.direct_networks,
        )
        self.plan = plan
        return self.applier.converge(plan)

    async def converge(self, reason: str, links: Optional[Dict[str, Dict[str, Any]]] = None) -> Optional[str]:
        """Observe, plan and apply once; None on success, else the error text."""
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            try:
                changes = await asyncio.to_thread(self._converge_blocking, links)
            except (PlanError, CommandError, OSError) as e:
                self.last_error = str(e)
                self.log.warning("dataplane_error", reason=reason, error=str(e))
                return str(e)
        self.last_error = None
        if changes:
            self.log.info("dataplane_applied", reason=reason, changes=changes)
        return None

    def _reset_stranded(self, devices: List[str], links: Dict[str, Dict[str, Any]]) -> None:
        """Reset the box's own TCP connections that left by a WAN that just went down (the agent's
        session to the backend among them): they cannot move to another link (their source address
        and the ISP's NAT mapping are gone), and would hang until their keepalive gives up. Reset,
        they reconnect at once by a link that is up. The MPTCP subflows of the tunnel (to the
        aggregation server) are left to MPTCP."""
        server_ip = (self.plan or {}).get("server_ip")
        for dev in devices:
            address = (links.get(dev) or self.links.get(dev) or {}).get("address")
            if not address:
                continue
            argv = ["ss", "-K", "-t", "state", "established", "src", str(address)]
            if server_ip:
                argv += ["and", "not", "dst", str(server_ip)]
            code, _out, err = self.runner(argv, None)
            if code != 0:
                self.log.warning("dataplane_reset_failed", device=dev, error=err.strip()[:200])
            else:
                self.log.info("dataplane_reset_stranded", device=dev, address=address)

    async def apply_config(self, config: Dict[str, Any]) -> Optional[str]:
        """The config cycle's applier: plan and apply ``config`` (errors are the applied-config error)."""
        self.config = config
        return await self.converge("config")

    async def run(self, stop: asyncio.Event) -> None:
        """Watch the WANs and the children until ``stop`` is set, then stop the children."""
        try:
            await self._watch(stop)
        finally:
            await asyncio.to_thread(self.supervisor.stop_all)

    async def _watch(self, stop: asyncio.Event) -> None:
        states: Dict[str, bool] = {}
        last_observe = last_converge = 0.0
        while not stop.is_set():
            now = time.monotonic()
            wans = self._wans()
            new_states = self.observer.link_states([dev for _, dev in wans])
            restarted = self.supervisor.poll()
            if self.config is not None:
                reason = None
                links = None
                if restarted:
                    reason = f"restarted {', '.join(restarted)}"
                elif new_states != states or now - last_observe >= self.OBSERVE_INTERVAL:
                    last_observe = now
                    direct = self.observer.direct_networks
                    links = await asyncio.to_thread(self.observer.observe, wans)
                    if links != self.links:
                        reason = "links changed"
                    elif direct != self.observer.direct_networks:
                        reason = "routes changed"
                since = now - last_converge
                if reason is None and (
                    since >= self.RESYNC_INTERVAL or (self.last_error and since >= self.RETRY_INTERVAL)
                ):
                    reason = "retry" if self.last_error else "resync"
                before = dict(self.links)
                if reason is not None:
                    last_converge = now
                    await self.converge(reason, links)
                went_down = [dev for dev, up in new_states.items() if not up and states.get(dev)]
                if went_down:
                    await asyncio.to_thread(self._reset_stranded, went_down, before)
            states = new_states
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self.POLL_INTERVAL)
