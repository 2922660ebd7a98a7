"""Bring the host to a plan: read what the kernel holds, change only what differs.

The converger reads the host once (``observe``) and then keeps that picture up to date with every
change it makes, so converging to the same plan again runs no command at all. Any failed command
makes it read the host again before the next round (``invalidate``), as does a restart of
wireguard-go (its interface, addresses, routes and peers are gone with it).

Pieces are compared one by one (an address, a route, a WireGuard peer, an nftables element or
object, an ss-server and its configuration), each belonging to one box: a change to one box never
runs a command for another, and boxes that did not change keep their connections and counters.
Order of a round: host (sysctls, MPTCP limits, the nftables table, wireguard-go and its key and
port), then ss-servers that must go, nftables (one ``nft -f`` batch: elements and objects that go,
then those that come), WireGuard peers, routes and addresses, and last the ss-servers that come.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, List, Optional, Set, Tuple

from otb_agent.util import Logger
from otb_agent.x25519 import b64, generate_private_key, public_key

from .plan import (
    NFT_FAMILY,
    NFT_TABLE,
    SCHEMA_COUNTER_PREFIX,
    SET_PORTS,
    WG_IFACE,
    WG_MTU,
    BoxPlan,
    HostPlan,
    Limit,
    Plan,
    WgPeer,
    object_prefix,
    ss_argv,
    ss_child_name,
    ss_config_path,
)
from .runner import CommandError, Runner
from .supervise import ChildSpec, Supervisor

WG_CHILD = "wireguard-go"
WG_ARGV = ("wireguard-go", "-f", WG_IFACE)
WG_KEY_FILE = "wg.key"
LINK_WAIT_S = 5.0
# From this many changes of one kind on, they go to the kernel in one process (``ip -batch``,
# ``wg addconf``): a gateway starting with hundreds of boxes would otherwise run thousands of commands.
BATCH_FROM = 8
_UNITS = {"bytes": 1, "kbytes": 1024, "mbytes": 1024 * 1024}


# ------------------------------------------------------------------------------------- reading


@dataclass
class Actual:
    """What the host holds, as far as the gateway is concerned."""

    sysctls: Dict[str, str] = field(default_factory=dict)
    mptcp_limits: Optional[Tuple[int, int]] = None  # (subflows, add_addr_accepted)
    table_signature: Optional[str] = None  # None: no table; "": a table without our signature
    elements: Dict[str, Dict[str, str]] = field(default_factory=dict)
    counters: Dict[str, int] = field(default_factory=dict)  # name -> bytes
    limits: Dict[str, Limit] = field(default_factory=dict)
    link: bool = False
    link_up: bool = False
    link_mtu: int = 0
    wg_private_key: Optional[str] = None
    wg_port: Optional[int] = None
    wg_peers: Dict[str, WgPeer] = field(default_factory=dict)
    handshakes: Dict[str, int] = field(default_factory=dict)  # public key -> unix time (0: never)
    addresses: Set[str] = field(default_factory=set)
    routes: Set[str] = field(default_factory=set)

    def forget_link(self) -> None:
        """The interface is gone (or new): nothing that lived on it is left."""
        self.link = self.link_up = False
        self.link_mtu = 0
        self.wg_private_key = self.wg_port = None
        self.wg_peers, self.handshakes = {}, {}
        self.addresses, self.routes = set(), set()


def _discard(items: Set[str], item: str) -> Callable[[], None]:
    return lambda: items.discard(item)


def _add(items: Set[str], item: str) -> Callable[[], None]:
    return lambda: items.add(item)


def _normalize_key(value: Any) -> str:
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, dict) and isinstance(value.get("prefix"), dict):
        prefix = value["prefix"]
        return str(ipaddress.ip_network(f"{prefix.get('addr')}/{prefix.get('len')}", strict=False))
    if isinstance(value, dict) and "elem" in value:
        return _normalize_key(value["elem"].get("val"))
    text = str(value)
    if "/" in text:
        try:
            return str(ipaddress.ip_network(text, strict=False))
        except ValueError:
            return text
    return text


def parse_nft_table(
    text: str,
) -> Tuple[Optional[str], Dict[str, Dict[str, str]], Dict[str, int], Dict[str, Limit]]:
    """(schema signature, set/map elements, counters, limits) of ``nft -j list table`` output."""
    data = json.loads(text)
    signature = ""
    elements: Dict[str, Dict[str, str]] = {}
    counters: Dict[str, int] = {}
    limits: Dict[str, Limit] = {}
    for item in data.get("nftables", []):
        if not isinstance(item, dict):
            continue
        if "counter" in item:
            counter = item["counter"]
            name = str(counter.get("name", ""))
            if name.startswith(SCHEMA_COUNTER_PREFIX):
                signature = name
            else:
                counters[name] = int(counter.get("bytes", 0))
        elif "limit" in item:
            limit = item["limit"]
            rate = int(limit.get("rate", 0)) * _UNITS.get(str(limit.get("rate_unit", "bytes")), 1)
            burst = int(limit.get("burst", 0)) * _UNITS.get(str(limit.get("burst_unit", "bytes")), 1)
            limits[str(limit.get("name", ""))] = Limit(bytes_per_s=rate, burst_bytes=burst)
        elif "set" in item or "map" in item:
            entry = item.get("set") or item.get("map") or {}
            values: Dict[str, str] = {}
            for elem in entry.get("elem", []) or []:
                if isinstance(elem, list) and len(elem) == 2:
                    values[_normalize_key(elem[0])] = _normalize_key(elem[1])
                else:
                    values[_normalize_key(elem)] = ""
            elements[str(entry.get("name", ""))] = values
    return signature, elements, counters, limits


def parse_wg_dump(text: str) -> Tuple[Optional[str], Optional[int], Dict[str, WgPeer], Dict[str, int]]:
    """(private key, listen port, peers, latest handshakes) of ``wg show <iface> dump``."""
    lines = [line.split("\t") for line in text.splitlines() if line.strip()]
    if not lines or len(lines[0]) < 3:
        return None, None, {}, {}
    head = lines[0]
    private_key = None if head[0] == "(none)" else head[0]
    try:
        port: Optional[int] = int(head[2])
    except ValueError:
        port = None
    peers: Dict[str, WgPeer] = {}
    handshakes: Dict[str, int] = {}
    for parts in lines[1:]:
        if len(parts) < 5:
            continue
        key, psk, _endpoint, allowed = parts[0], parts[1], parts[2], parts[3]
        allowed_ips = () if allowed in ("(none)", "") else tuple(sorted(allowed.split(",")))
        peers[key] = WgPeer(
            public_key=key,
            preshared_key=None if psk == "(none)" else psk,
            allowed_ips=tuple(sorted(str(ipaddress.ip_network(a, strict=False)) for a in allowed_ips)),
        )
        try:
            handshakes[key] = int(parts[4])
        except ValueError:
            handshakes[key] = 0
    return private_key, port, peers, handshakes


def parse_addresses(text: str) -> Set[str]:
    """Addresses (``a.b.c.d/len``) of ``ip -j addr show dev X``, link-local ones left out."""
    found = set()
    for link in json.loads(text or "[]"):
        for info in link.get("addr_info", []):
            if info.get("scope") == "link" or "local" not in info:
                continue
            found.add(f"{info['local']}/{info['prefixlen']}")
    return found


def parse_routes(text: str) -> Set[str]:
    """Destinations of ``ip -j route show dev X`` that were not made by the kernel itself."""
    found = set()
    for route in json.loads(text or "[]"):
        if route.get("protocol") == "kernel":
            continue
        dst = str(route.get("dst", ""))
        if not dst or dst == "default":
            continue
        found.add(str(ipaddress.ip_network(dst, strict=False)))
    return found


def parse_mptcp_limits(text: str) -> Optional[Tuple[int, int]]:
    words = text.split()
    values = dict(zip(words[::2], words[1::2]))
    try:
        return int(values["subflows"]), int(values["add_addr_accepted"])
    except (KeyError, ValueError):
        return None


# ------------------------------------------------------------------------------------ converging


@dataclass
class Result:
    """What one round did."""

    commands: int = 0  # changes made (commands run that change the host, processes started/stopped)
    errors: List[str] = field(default_factory=list)
    touched: Set[str] = field(default_factory=set)  # boxes that had something changed


def _nft_value(value: str) -> str:
    if not value:
        return ""
    try:
        ipaddress.ip_address(value)
        return value
    except ValueError:
        return f'"{value}"'


def _nft_elements(verb: str, name: str, items: Iterable[Tuple[str, str]]) -> str:
    parts = []
    for key, value in sorted(items):
        shown = _nft_value(value) if verb == "add" else ""
        parts.append(f"{key} : {shown}" if shown else key)
    return f"{verb} element {NFT_FAMILY} {NFT_TABLE} {name} {{ {', '.join(parts)} }}"


class Converger:
    def __init__(
        self,
        runner: Runner,
        supervisor: Supervisor,
        state_dir: str,
        log: Logger,
        *,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.runner = runner
        self.supervisor = supervisor
        self.state_dir = state_dir
        self.log = log
        self.sleep = sleep
        self.clock = clock
        self.actual: Optional[Actual] = None
        self.plan: Optional[Plan] = None  # the last plan converged to (owners of pieces)
        self._key: Optional[str] = None
        self._stale = False

    # -- the key ---------------------------------------------------------------------------------

    @property
    def key_path(self) -> str:
        return os.path.join(self.state_dir, WG_KEY_FILE)

    def private_key(self) -> str:
        """The gateway's WireGuard private key, made on first use (``<state>/wg.key``, 0600)."""
        if self._key is None:
            text = (self.runner.read_file(self.key_path) or "").strip()
            if not text:
                text = b64(generate_private_key())
                self.runner.write_file(self.key_path, text + "\n", 0o600)
                self.log.info("wg_key_generated", path=self.key_path)
            self._key = text
        return self._key

    def public_key(self) -> str:
        """The public key of ``private_key()`` (what the backend hands the boxes)."""
        return b64(public_key(base64.b64decode(self.private_key())))

    # -- reading ---------------------------------------------------------------------------------

    def invalidate(self) -> None:
        """Read the host again before the next round."""
        self.actual = None

    def observe(self) -> Actual:
        """Read everything the gateway manages from the host (read-only commands)."""
        run = self.runner.run
        actual = Actual()
        names = [name for name, _ in HostPlan(wg_port=0).sysctls]
        done = run(["sysctl", "-n", *names], mutates=False, check=False)
        values = done.stdout.splitlines()
        if len(values) == len(names):
            actual.sysctls = {name: value.strip() for name, value in zip(names, values)}
        done = run(["ip", "mptcp", "limits", "show"], mutates=False, check=False)
        actual.mptcp_limits = parse_mptcp_limits(done.stdout) if done.returncode == 0 else None
        done = run(["nft", "-j", "list", "table", NFT_FAMILY, NFT_TABLE], mutates=False, check=False)
        if done.returncode == 0 and done.stdout.strip():
            signature, elements, counters, limits = parse_nft_table(done.stdout)
            actual.table_signature, actual.elements = signature, elements
            actual.counters, actual.limits = counters, limits
        done = run(["ip", "-j", "link", "show", "dev", WG_IFACE], mutates=False, check=False)
        links = json.loads(done.stdout or "[]") if done.returncode == 0 else []
        if links:
            actual.link = True
            actual.link_up = "UP" in (links[0].get("flags") or [])
            actual.link_mtu = int(links[0].get("mtu") or 0)
            done = run(["wg", "show", WG_IFACE, "dump"], mutates=False, check=False)
            if done.returncode == 0:
                key, port, peers, handshakes = parse_wg_dump(done.stdout)
                actual.wg_private_key, actual.wg_port = key, port
                actual.wg_peers, actual.handshakes = peers, handshakes
            done = run(["ip", "-j", "addr", "show", "dev", WG_IFACE], mutates=False, check=False)
            actual.addresses = parse_addresses(done.stdout) if done.returncode == 0 else set()
            for family in ("-4", "-6"):
                done = run(["ip", "-j", family, "route", "show", "dev", WG_IFACE], mutates=False, check=False)
                if done.returncode == 0:
                    actual.routes |= parse_routes(done.stdout)
        return actual

    # -- a round ---------------------------------------------------------------------------------

    def converge(self, plan: Plan) -> Result:
        """Make the host match ``plan``; returns what changed and what failed (never raises for a
        command that fails: the error is in the result and the next round starts from a fresh read)."""
        result = Result()
        if self.actual is None:
            self.actual = self.observe()
        actual = self.actual
        self._host(plan.host, actual, result)
        owners = self._owners(plan)
        self._ss_stop(plan, result, owners)
        self._nft(plan, actual, result, owners)
        if actual.link:
            self._wg_peers(plan, actual, result, owners)
            self._routes_and_addresses(plan, actual, result, owners)
        elif any(box.wg_peer or box.addresses for box in plan.boxes.values()):
            result.errors.append(f"{WG_IFACE} is missing: tunnels, addresses and routes not configured")
        self._ss_start(plan, result)
        self.plan = plan
        if result.errors or self._stale:
            self._stale = False
            self.invalidate()
        return result

    def _owners(self, plan: Plan) -> Dict[str, str]:
        """Piece -> box id, for the pieces of the last plan and this one (to name a box in errors)."""
        owners: Dict[str, str] = {}
        for source in (self.plan, plan):
            if source is None:
                continue
            for box in source.boxes.values():
                for piece in (*box.addresses, *box.routes, *box.counters, *box.limits):
                    owners[piece] = box.box_id
                if box.wg_peer is not None:
                    owners[box.wg_peer.public_key] = box.box_id
        return owners

    def _do(
        self,
        argv: List[str],
        result: Result,
        *,
        box: Optional[str] = None,
        input: Optional[str] = None,
        secret_input: bool = False,
    ) -> bool:
        try:
            self.runner.run(argv, input=input, secret_input=secret_input)
        except CommandError as e:
            where = f"box {box}: " if box else ""
            result.errors.append(f"{where}{e}")
            self.log.error("converge_command_failed", box=box, error=str(e))
            return False
        result.commands += 1
        if box:
            result.touched.add(box)
        return True

    # -- host ------------------------------------------------------------------------------------

    def _host(self, host: HostPlan, actual: Actual, result: Result) -> None:
        for name, value in host.sysctls:
            if actual.sysctls.get(name) != value and self._do(["sysctl", "-w", f"{name}={value}"], result):
                actual.sysctls[name] = value
        limits = (host.mptcp_subflows, host.mptcp_add_addr_accepted)
        if actual.mptcp_limits != limits:
            argv = ["ip", "mptcp", "limits", "set", "subflows", str(limits[0])]
            if self._do([*argv, "add_addr_accepted", str(limits[1])], result):
                actual.mptcp_limits = limits
        if actual.table_signature != host.table_signature:
            script = host.table_script(replace=actual.table_signature is not None)
            if self._do(["nft", "-f", "-"], result, input=script):
                actual.table_signature = host.table_signature
                actual.elements = {}
                actual.counters, actual.limits = {}, {}
        self._wireguard(host, actual, result)

    def _wireguard(self, host: HostPlan, actual: Actual, result: Result) -> None:
        try:
            started = self.supervisor.ensure(ChildSpec(name=WG_CHILD, argv=WG_ARGV))
        except CommandError as e:
            result.errors.append(f"wireguard-go: {e}")
            return
        if started:
            result.commands += 1
            actual.forget_link()
            # A dry run starts nothing: go on as if the interface had appeared, to show the rest.
            actual.link = self.runner.dry_run or self._wait_for_link()
            if not actual.link:
                result.errors.append(f"wireguard-go started but {WG_IFACE} did not appear")
                return
        elif not actual.link:
            actual.link = self._wait_for_link(0.0)
            if not actual.link:
                return
        key = self.private_key()
        if actual.wg_private_key != key or actual.wg_port != host.wg_port:
            argv = ["wg", "set", WG_IFACE, "private-key", self.key_path, "listen-port", str(host.wg_port)]
            if self._do(argv, result):
                actual.wg_private_key, actual.wg_port = key, host.wg_port
        up = ["ip", "link", "set", "dev", WG_IFACE, "mtu", str(WG_MTU), "up"]
        if (not actual.link_up or actual.link_mtu != WG_MTU) and self._do(up, result):
            actual.link_up, actual.link_mtu = True, WG_MTU

    def _wait_for_link(self, timeout: float = LINK_WAIT_S) -> bool:
        deadline = self.clock() + timeout
        while True:
            done = self.runner.run(["ip", "-j", "link", "show", "dev", WG_IFACE], mutates=False, check=False)
            if done.returncode == 0 and json.loads(done.stdout or "[]"):
                return True
            if self.clock() >= deadline:
                return False
            self.sleep(0.05)

    # -- ss-server -------------------------------------------------------------------------------

    def _ss_stop(self, plan: Plan, result: Result, owners: Dict[str, str]) -> None:
        prefix = ss_child_name("")
        for name in self.supervisor.names(prefix):
            box_id = name[len(prefix) :]
            box = plan.boxes.get(box_id)
            child = self.supervisor.children[name]
            if box is not None and box.ss_config is not None and child.spec.fingerprint == box.ss_fingerprint:
                continue
            self.supervisor.stop(name)
            result.commands += 1
            result.touched.add(box_id)
            if box is None or box.ss_config is None:
                self.runner.remove_file(ss_config_path(self.state_dir, box_id))

    def _ss_start(self, plan: Plan, result: Result) -> None:
        for box in plan.boxes.values():
            if box.ss_config is None:
                continue
            name = ss_child_name(box.box_id)
            spec = ChildSpec(
                name=name, argv=ss_argv(self.state_dir, box.box_id), fingerprint=box.ss_fingerprint or ""
            )
            child = self.supervisor.children.get(name)
            if child is not None and child.spec == spec:
                continue  # running, or restarting after a death (the supervisor's job)
            try:
                self.runner.write_file(ss_config_path(self.state_dir, box.box_id), box.ss_config, 0o600)
                self.supervisor.ensure(spec)
            except (CommandError, OSError) as e:
                result.errors.append(f"box {box.box_id}: ss-server: {e}")
                continue
            result.commands += 1
            result.touched.add(box.box_id)

    # -- nftables --------------------------------------------------------------------------------

    def _nft(self, plan: Plan, actual: Actual, result: Result, owners: Dict[str, str]) -> None:
        if actual.table_signature != plan.host.table_signature:
            return  # the table could not be made; the error is recorded
        ports_before = set(actual.elements.get(SET_PORTS, {}))
        groups: Dict[str, List[List[str]]] = {}  # box id -> [deletes, object deletes, adds]

        def group(box_id: str) -> List[List[str]]:
            return groups.setdefault(box_id, [[], [], [], []])

        want_limits: Dict[str, Tuple[Limit, str]] = {}
        want_counters: Dict[str, str] = {}
        want_elements: Dict[str, Dict[str, Tuple[str, str]]] = {}
        for box in plan.boxes.values():
            for name in box.counters:
                want_counters[name] = box.box_id
            for name, limit in box.limits.items():
                want_limits[name] = (limit, box.box_id)
            for set_name, items in box.elements.items():
                for key, value in items.items():
                    want_elements.setdefault(set_name, {})[key] = (value, box.box_id)
        changed_limits = {
            name
            for name, (limit, _) in want_limits.items()
            if name in actual.limits and actual.limits[name] != limit
        }

        def owner_of(name: str) -> str:
            if name.startswith("b") and "_" in name:
                prefix = name.split("_", 1)[0]
                for box in plan.boxes.values():
                    if object_prefix(box.box_id) == prefix:
                        return box.box_id
            return owners.get(name, "")

        # elements that go (absent from the plan, or mapped to another value)
        removed_elements: Dict[str, Dict[str, str]] = {}
        for set_name, items in actual.elements.items():
            wanted = want_elements.get(set_name, {})
            for key, value in items.items():
                want = wanted.get(key)
                if want is None or want[0] != value or value in changed_limits:
                    box_id = want[1] if want is not None else owner_of(value) or owners.get(key, "")
                    group(box_id)[0].append(_nft_elements("delete", set_name, [(key, value)]))
                    removed_elements.setdefault(set_name, {})[key] = value
        for name in actual.counters:
            if name not in want_counters:
                group(owner_of(name))[1].append(f"delete counter {NFT_FAMILY} {NFT_TABLE} {name}")
        for name in actual.limits:
            if name not in want_limits or name in changed_limits:
                group(owner_of(name))[1].append(f"delete limit {NFT_FAMILY} {NFT_TABLE} {name}")
        for name, box_id in want_counters.items():
            if name not in actual.counters:
                group(box_id)[2].append(f"add counter {NFT_FAMILY} {NFT_TABLE} {name}")
        for name, (limit, box_id) in want_limits.items():
            if name not in actual.limits or name in changed_limits:
                group(box_id)[2].append(
                    f"add limit {NFT_FAMILY} {NFT_TABLE} {name} "
                    f"{{ rate over {limit.bytes_per_s} bytes/second burst {limit.burst_bytes} bytes }}"
                )
        for set_name, wanted in want_elements.items():
            have = actual.elements.get(set_name, {})
            gone = removed_elements.get(set_name, {})
            for key, (value, box_id) in wanted.items():
                if key in have and key not in gone:
                    continue
                group(box_id)[3].append(_nft_elements("add", set_name, [(key, value)]))
        if not groups:
            return
        # One batch (atomic) for the round; if it fails, box by box, so one box's error names it and
        # does not hold the others back.
        if not self._nft_batch(groups, result, None):
            if len(groups) > 1:
                for box_id in sorted(groups):
                    self._nft_batch({box_id: groups[box_id]}, result, box_id or None)
            self._stale = True
            return
        self._nft_applied(plan, actual, want_elements, want_counters, want_limits)
        for port in sorted(ports_before ^ set(want_elements.get(SET_PORTS, {}))):
            self._conntrack_forget(port)

    def _conntrack_forget(self, port: str) -> None:
        """Forget the UDP flows to a box port that just came or went. NAT is decided on a flow's
        first packet: a box whose WireGuard spoke before its port was redirected (the gateway polls
        every 2 s, a new box gets its config at once) keeps a flow that is not redirected, and its
        retries and keepalives (every 25 s, under the 30 s timeout) keep that flow alive for ever."""
        argv = ["conntrack", "-D", "-p", "udp", "--orig-port-dst", port]
        try:
            done = self.runner.run(argv, check=False)
        except CommandError as e:  # conntrack missing: the box waits for its flow to time out
            self.log.warning("conntrack_flush_failed", port=port, error=str(e))
            return
        if done.returncode not in (0, 1):  # 1: no flow to delete
            self.log.warning("conntrack_flush_failed", port=port, error=done.stderr.strip()[:200])

    def _nft_batch(self, groups: Dict[str, List[List[str]]], result: Result, box: Optional[str]) -> bool:
        lines: List[str] = []
        for stage in range(4):
            for box_id in sorted(groups):
                lines.extend(groups[box_id][stage])
        try:
            self.runner.run(["nft", "-f", "-"], input="\n".join(lines) + "\n")
        except CommandError as e:
            if box is not None or len(groups) == 1:
                only = box or next(iter(groups))
                result.errors.append(f"box {only}: nftables: {e}" if only else f"nftables: {e}")
                self.log.error("converge_command_failed", box=only or None, error=str(e))
            return False
        result.commands += 1
        result.touched.update(box_id for box_id in groups if box_id)
        return True

    @staticmethod
    def _nft_applied(
        plan: Plan,
        actual: Actual,
        want_elements: Dict[str, Dict[str, Tuple[str, str]]],
        want_counters: Dict[str, str],
        want_limits: Dict[str, Tuple[Limit, str]],
    ) -> None:
        actual.elements = {
            set_name: {key: value for key, (value, _) in items.items()}
            for set_name, items in want_elements.items()
        }
        actual.counters = {name: actual.counters.get(name, 0) for name in want_counters}
        actual.limits = {name: limit for name, (limit, _) in want_limits.items()}

    # -- WireGuard peers ---------------------------------------------------------------------------

    def _wg_peers(self, plan: Plan, actual: Actual, result: Result, owners: Dict[str, str]) -> None:
        wanted: Dict[str, Tuple[WgPeer, str]] = {
            box.wg_peer.public_key: (box.wg_peer, box.box_id) for box in plan.boxes.values() if box.wg_peer
        }
        for key in sorted(set(actual.wg_peers) - set(wanted)):
            if self._do(["wg", "set", WG_IFACE, "peer", key, "remove"], result, box=owners.get(key)):
                del actual.wg_peers[key]
                actual.handshakes.pop(key, None)
        new = {key: item for key, item in wanted.items() if key not in actual.wg_peers}
        if len(new) >= BATCH_FROM and self._wg_addconf(new, actual, result):
            pass  # every new peer in one wg call (a gateway starting with hundreds of boxes)
        for key, (peer, box_id) in sorted(wanted.items()):
            if actual.wg_peers.get(key) == peer:
                continue
            argv = ["wg", "set", WG_IFACE, "peer", key]
            if peer.preshared_key:
                argv += ["preshared-key", "/dev/stdin"]
            else:
                argv += ["preshared-key", "/dev/null"]
            argv += ["allowed-ips", ",".join(peer.allowed_ips)]
            psk = peer.preshared_key + "\n" if peer.preshared_key else None
            if self._do(argv, result, box=box_id, input=psk, secret_input=True):
                actual.wg_peers[key] = peer

    def _wg_addconf(self, new: Dict[str, Tuple[WgPeer, str]], actual: Actual, result: Result) -> bool:
        """Add peers that do not exist yet with one ``wg addconf``; False (nothing recorded) if it
        failed, and the peers are then added one by one."""
        sections = []
        for key, (peer, _) in sorted(new.items()):
            lines = ["[Peer]", f"PublicKey = {key}", f"AllowedIPs = {', '.join(peer.allowed_ips)}"]
            if peer.preshared_key:
                lines.insert(2, f"PresharedKey = {peer.preshared_key}")
            sections.append("\n".join(lines))
        try:
            self.runner.run(
                ["wg", "addconf", WG_IFACE, "/dev/stdin"],
                input="\n\n".join(sections) + "\n",
                secret_input=True,
            )
        except CommandError as e:
            self.log.warning("wg_addconf_failed", error=str(e), peers=len(new))
            return False
        result.commands += 1
        for key, (peer, box_id) in new.items():
            actual.wg_peers[key] = peer
            result.touched.add(box_id)
        return True

    # -- routes and addresses ----------------------------------------------------------------------

    def _routes_and_addresses(
        self, plan: Plan, actual: Actual, result: Result, owners: Dict[str, str]
    ) -> None:
        want_addresses = {a: box.box_id for box in plan.boxes.values() for a in box.addresses}
        want_routes = {r: box.box_id for box in plan.boxes.values() for r in box.routes}
        # (ip arguments, box, what to record once it succeeded), in the order they must run
        steps: List[Tuple[List[str], Optional[str], Callable[[], None]]] = []
        for route in sorted(actual.routes - set(want_routes)):
            steps.append(
                (["route", "del", route, "dev", WG_IFACE], owners.get(route), _discard(actual.routes, route))
            )
        for address in sorted(actual.addresses - set(want_addresses)):
            steps.append(
                (
                    ["addr", "del", address, "dev", WG_IFACE],
                    owners.get(address),
                    _discard(actual.addresses, address),
                )
            )
        for address, box_id in sorted(want_addresses.items()):
            if address not in actual.addresses:
                steps.append(
                    (["addr", "add", address, "dev", WG_IFACE], box_id, _add(actual.addresses, address))
                )
        for route, box_id in sorted(want_routes.items()):
            if route not in actual.routes:
                argv = ["route", "replace", route, "dev", WG_IFACE, "proto", "static"]
                steps.append((argv, box_id, _add(actual.routes, route)))
        if len(steps) >= BATCH_FROM:
            self._ip_batch(steps, result)
            return
        for args, owner, record in steps:
            if self._do(["ip", *args], result, box=owner):
                record()

    def _ip_batch(
        self, steps: List[Tuple[List[str], Optional[str], Callable[[], None]]], result: Result
    ) -> None:
        """Run many ``ip`` changes in one process (``ip -force -batch -`` goes on past a failure and
        names each failed line: ``Command failed -:N``), recording the ones that worked."""
        script = "".join(" ".join(argv) + "\n" for argv, _, _ in steps)
        done = self.runner.run(["ip", "-force", "-batch", "-"], input=script, check=False)
        failed: Dict[int, str] = {}
        message: List[str] = []
        for line in done.stderr.splitlines():
            if line.startswith("Command failed -:"):
                line_number = line.rsplit(":", 1)[1]
                if line_number.isdigit():
                    failed[int(line_number)] = "; ".join(message) or line
                message = []
            elif line.strip():
                message.append(line.strip())
        if done.returncode != 0 and not failed:
            failed = {
                n: done.stderr.strip() or f"exit status {done.returncode}" for n in range(1, len(steps) + 1)
            }
        for number, (argv, box_id, record) in enumerate(steps, start=1):
            if number in failed:
                where = f"box {box_id}: " if box_id else ""
                error = f"{where}ip {' '.join(argv)}: {failed[number]}"
                result.errors.append(error)
                self.log.error("converge_command_failed", box=box_id, error=error)
                continue
            record()
            if box_id:
                result.touched.add(box_id)
        result.commands += 1

    # -- teardown --------------------------------------------------------------------------------

    def teardown(self) -> Result:
        """Remove everything the gateway made: its children (ss-servers, wireguard-go and with it
        otbgw0, its addresses, routes and peers), the nftables table, the ss-server configurations.
        Sysctls and MPTCP limits are left as they are."""
        result = Result()
        for name in self.supervisor.names():
            self.supervisor.stop(name)
            result.commands += 1
        done = self.runner.run(["nft", "list", "table", NFT_FAMILY, NFT_TABLE], mutates=False, check=False)
        if done.returncode == 0:
            self._do(["nft", "delete", "table", NFT_FAMILY, NFT_TABLE], result)
        ss_dir = os.path.dirname(ss_config_path(self.state_dir, "x"))
        for entry in self.runner.list_dir(ss_dir):
            if entry.endswith(".json"):
                self.runner.remove_file(os.path.join(ss_dir, entry))
        self.invalidate()
        self.plan = None
        return result


def box_pieces(box: BoxPlan) -> Dict[str, Any]:
    """A box's pieces, for logs (no secrets)."""
    return {
        "port": box.port,
        "addresses": list(box.addresses),
        "routes": list(box.routes),
        "wg_peer": box.wg_peer.public_key if box.wg_peer else None,
        "ss_server": box.ss_config is not None,
        "limits": sorted(box.limits),
    }
