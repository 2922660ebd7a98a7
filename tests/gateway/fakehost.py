"""A pretend host for the gateway's unit tests: a Runner that records every change and answers the
gateway's reads from a model of the kernel it keeps (sysctls, MPTCP limits, the nftables table,
otbgw0 with its WireGuard peers, addresses and routes, processes, files).

It is as strict as the real tools where that matters to the converger: adding a map element that
exists with another value, deleting an element or object that is not there, or deleting a counter an
element still uses fails as nft fails; ``ip addr add`` of an address that exists fails; otbgw0 exists
only while a wireguard-go process runs. Its output formats are those of the real tools (JSON of
``nft -j``/``ip -j``, ``wg show dump``), checked against the real kernel by test_kernel.py.
"""

from __future__ import annotations

import ipaddress
import itertools
import json
import re
import shlex
import signal
from collections.abc import Sequence
from dataclasses import dataclass, field

from otb_gateway.runner import CommandError, Completed, ProcessInfo, Runner

TABLE = "otb_gateway"


@dataclass
class FakeProcess:
    argv: tuple[str, ...]
    alive: bool = True
    zombie: bool = False
    stubborn: bool = False  # ignores SIGTERM


@dataclass
class FakeWgPeer:
    psk: str | None
    allowed: list[str]
    handshake: int = 0


@dataclass
class FakeLink:
    up: bool = False
    mtu: int = 1420
    private_key: str | None = None
    port: int = 40000
    peers: dict[str, FakeWgPeer] = field(default_factory=dict)
    addresses: set[str] = field(default_factory=set)
    routes: set[str] = field(default_factory=set)


class FakeHost(Runner):
    """Runner double: ``changes`` lists every change made (commands that mutate, processes started
    and signalled, files written and removed); ``reads`` lists the read-only commands."""

    def __init__(self) -> None:
        super().__init__()
        self.changes: list[str] = []
        self.reads: list[str] = []
        self.files: dict[str, str] = {}
        self.processes: dict[int, FakeProcess] = {}
        self._pids = itertools.count(1000)
        self.sysctls = {
            "net.ipv4.ip_forward": "0",
            "net.ipv6.conf.all.forwarding": "0",
            "net.mptcp.enabled": "1",
        }
        self.mptcp = (2, 0)
        self.table: dict | None = (
            None  # {"signature", "sets": {name: {key: value}}, "counters": {}, "limits": {}}
        )
        self.link: FakeLink | None = None
        self.fail: dict[str, str] = {}  # a command line containing the key fails with the value
        self.established: dict[int, int] = {}  # port -> established MPTCP connections
        self.conntrack_flushed: list[str] = []  # UDP ports whose flows `conntrack -D` forgot

    # -- helpers for tests ------------------------------------------------------------------------

    def take_changes(self) -> list[str]:
        changes, self.changes = self.changes, []
        self.reads = []
        return changes

    def pid_of(self, program: str, *args: str) -> int | None:
        for pid, proc in self.processes.items():
            if proc.alive and proc.argv[0] == program and all(a in proc.argv for a in args):
                return pid
        return None

    def kill(self, pid: int) -> None:
        """The process dies on its own (not through the gateway)."""
        self._die(pid)

    def listening(self) -> set[int]:
        ports = set()
        for proc in self.processes.values():
            if proc.alive and proc.argv[0] == "ss-server":
                config = json.loads(self.files[proc.argv[2]])
                ports.add(config["server_port"])
        return ports

    def _die(self, pid: int) -> None:
        proc = self.processes[pid]
        proc.alive = False
        if proc.argv[:1] == ("wireguard-go",):
            self.link = None

    # -- Runner: processes and files --------------------------------------------------------------

    def spawn(self, argv: Sequence[str], *, log_path: str) -> int:
        pid = next(self._pids)
        self.processes[pid] = FakeProcess(tuple(argv))
        self.changes.append(f"start {shlex.join(argv)}")
        if argv[0] == "wireguard-go":
            if self.link is not None:
                self.processes[pid].alive = False  # the real one refuses: the interface is in use
            else:
                self.link = FakeLink()
        return pid

    def process(self, pid: int) -> ProcessInfo | None:
        proc = self.processes.get(pid)
        if proc is None or not proc.alive:
            return None
        return ProcessInfo(argv=proc.argv, zombie=proc.zombie)

    def signal(self, pid: int, sig: int = signal.SIGTERM) -> bool:
        proc = self.processes.get(pid)
        if proc is None or not proc.alive:
            return False
        self.changes.append(f"kill -{int(sig)} {pid} ({shlex.join(proc.argv)})")
        if sig == signal.SIGKILL or not proc.stubborn:
            self._die(pid)
        return True

    def read_file(self, path: str) -> str | None:
        return self.files.get(path)

    def write_file(self, path: str, text: str, mode: int = 0o600) -> None:
        self.files[path] = text
        self.changes.append(f"write {path}")

    def remove_file(self, path: str) -> None:
        if self.files.pop(path, None) is not None:
            self.changes.append(f"rm {path}")

    def list_dir(self, path: str) -> list[str]:
        prefix = path.rstrip("/") + "/"
        return sorted(
            p[len(prefix) :] for p in self.files if p.startswith(prefix) and "/" not in p[len(prefix) :]
        )

    # -- Runner: commands -------------------------------------------------------------------------

    def run(
        self,
        argv: Sequence[str],
        *,
        input: str | None = None,
        mutates: bool = True,
        check: bool = True,
        secret_input: bool = False,
    ) -> Completed:
        line = shlex.join(argv)
        if input and mutates:
            line += " <<< " + ("(secret)" if secret_input else "; ".join(input.strip().splitlines()))
        (self.changes if mutates else self.reads).append(line)
        if list(argv) == ["ip", "-force", "-batch", "-"]:
            return self._ip_batch(argv, input or "", check)
        for needle, message in self.fail.items():
            if needle in line or (input and needle in input):
                return self._result(argv, 1, "", message, check)
        try:
            stdout = self._dispatch(list(argv), input or "")
        except _Failed as e:
            return self._result(argv, e.code, "", e.message, check)
        return self._result(argv, 0, stdout, "", check)

    @staticmethod
    def _result(argv: Sequence[str], code: int, out: str, err: str, check: bool) -> Completed:
        if code and check:
            raise CommandError(argv, code, err)
        return Completed(tuple(argv), code, out, err)

    def _dispatch(self, argv: list[str], stdin: str) -> str:
        program = argv[0]
        if program == "sysctl":
            if argv[1] == "-n":
                return "".join(f"{self.sysctls[name]}\n" for name in argv[2:])
            name, _, value = argv[2].partition("=")
            self.sysctls[name] = value
            return ""
        if program == "ip":
            return self._ip(argv[1:])
        if program == "nft":
            return self._nft(argv[1:], stdin)
        if program == "wg":
            return self._wg(argv[1:], stdin)
        if program == "conntrack" and argv[1:5] == ["-D", "-p", "udp", "--orig-port-dst"]:
            self.conntrack_flushed.append(argv[5])
            raise _Failed(1, "conntrack v1.4.7 (conntrack-tools): 0 flow entries have been deleted.")
        if program == "ss" and "-HnM" in argv:
            return "".join(
                f"0 0 198.51.100.1:{port} 192.0.2.9:{40000 + n}\n"
                for port, count in self.established.items()
                for n in range(count)
            )
        if program == "ss":  # ss -Hnti: every MPTCP connection has one subflow here
            return "".join(
                f"0 0 198.51.100.1:{port} 192.0.2.9:{40000 + n}\n\t bbr cwnd:10 tcp-ulp-mptcp flags:Mec\n"
                for port, count in self.established.items()
                for n in range(count)
            )
        raise _Failed(127, f"{program}: command not found")

    # -- ip ---------------------------------------------------------------------------------------

    def _ip_batch(self, argv: Sequence[str], script: str, check: bool) -> Completed:
        """``ip -force -batch -``: every line runs; each failure is reported as iproute2 does."""
        errors = []
        for number, line in enumerate(script.splitlines(), start=1):
            failure = next((message for needle, message in self.fail.items() if needle in line), None)
            try:
                if failure is not None:
                    raise _Failed(2, failure)
                self._ip(line.split())
            except _Failed as e:
                errors.append(f"{e.message}\nCommand failed -:{number}")
        return self._result(argv, 1 if errors else 0, "", "\n".join(errors), check)

    def _need_link(self) -> FakeLink:
        if self.link is None:
            raise _Failed(1, 'Cannot find device "otbgw0"')
        return self.link

    def _ip(self, args: list[str]) -> str:
        if args[:3] == ["mptcp", "limits", "show"]:
            return f"add_addr_accepted {self.mptcp[1]} subflows {self.mptcp[0]} \n"
        if args[:3] == ["mptcp", "limits", "set"]:
            self.mptcp = (int(args[4]), int(args[6]))
            return ""
        if args[:1] == ["-j"]:
            return self._ip_json(args[1:])
        if args[:2] == ["link", "set"]:
            link = self._need_link()
            link.mtu = int(args[args.index("mtu") + 1])
            link.up = "up" in args
            return ""
        if args[:1] == ["addr"]:
            link = self._need_link()
            verb, address = args[1], args[2]
            if verb == "add":
                if address in link.addresses:
                    raise _Failed(2, "RTNETLINK answers: File exists")
                link.addresses.add(address)
            elif verb == "del":
                if address not in link.addresses:
                    raise _Failed(2, "RTNETLINK answers: Cannot assign requested address")
                link.addresses.discard(address)
            return ""
        if args[:1] == ["route"]:
            link = self._need_link()
            verb, route = args[1], args[2]
            if verb == "replace":
                link.routes.add(route)
            elif verb == "del":
                if route not in link.routes:
                    raise _Failed(2, "RTNETLINK answers: No such process")
                link.routes.discard(route)
            return ""
        raise _Failed(1, f"fake ip does not know {args}")

    def _ip_json(self, args: list[str]) -> str:
        if args[:2] == ["link", "show"]:
            link = self._need_link()
            flags = ["POINTOPOINT", "NOARP", *(["UP", "LOWER_UP"] if link.up else [])]
            return json.dumps([{"ifname": "otbgw0", "flags": flags, "mtu": link.mtu}])
        if args[:2] == ["addr", "show"]:
            link = self._need_link()
            info = [
                {
                    "family": "inet",
                    "local": a.split("/")[0],
                    "prefixlen": int(a.split("/")[1]),
                    "scope": "global",
                }
                for a in sorted(link.addresses)
            ]
            info.append({"family": "inet6", "local": "fe80::1", "prefixlen": 64, "scope": "link"})
            return json.dumps([{"ifname": "otbgw0", "addr_info": info}])
        if args[1:3] == ["route", "show"]:
            link = self._need_link()
            six = args[0] == "-6"
            routes = [
                {"dst": r.removesuffix("/32"), "protocol": "static", "scope": "link"}
                for r in sorted(link.routes)
                if (":" in r) == six
            ]
            if not six:
                routes += [
                    {"dst": str(ipaddress.ip_network(a, strict=False)), "protocol": "kernel"}
                    for a in sorted(link.addresses)
                ]
            else:
                routes.append({"dst": "fe80::/64", "protocol": "kernel"})
            return json.dumps(routes)
        raise _Failed(1, f"fake ip -j does not know {args}")

    # -- wg ---------------------------------------------------------------------------------------

    def _wg(self, args: list[str], stdin: str) -> str:
        link = self._need_link()
        if args[0] == "show" and args[2] == "dump":
            lines = [f"{link.private_key or '(none)'}\t(pub)\t{link.port}\toff"]
            for key, peer in sorted(link.peers.items()):
                allowed = ",".join(peer.allowed) or "(none)"
                lines.append(f"{key}\t{peer.psk or '(none)'}\t(none)\t{allowed}\t{peer.handshake}\t0\t0\toff")
            return "\n".join(lines) + "\n"
        if args[0] == "show" and args[2] == "latest-handshakes":
            return "".join(f"{key}\t{peer.handshake}\n" for key, peer in sorted(link.peers.items()))
        if args[0] == "addconf":
            for section in stdin.split("[Peer]")[1:]:
                entries = dict(entry.split(" = ", 1) for entry in section.strip().splitlines())
                addresses = [a.strip() for a in entries["AllowedIPs"].split(",")]
                link.peers[entries["PublicKey"]] = FakeWgPeer(
                    psk=entries.get("PresharedKey"), allowed=addresses
                )
            return ""
        if args[0] == "set":
            rest = args[2:]
            if rest[0] == "private-key":
                link.private_key = (self.files.get(rest[1]) or "").strip()
                link.port = int(rest[3])
                return ""
            if rest[0] == "peer":
                key = rest[1]
                if rest[2:] == ["remove"]:
                    link.peers.pop(key, None)
                    return ""
                opts = dict(zip(rest[2::2], rest[3::2]))
                psk = stdin.strip() if opts.get("preshared-key") == "/dev/stdin" else None
                peer = link.peers.setdefault(key, FakeWgPeer(psk=None, allowed=[]))
                peer.psk = psk
                peer.allowed = opts["allowed-ips"].split(",")
                return ""
        raise _Failed(1, f"fake wg does not know {args}")

    # -- nft --------------------------------------------------------------------------------------

    def _nft(self, args: list[str], stdin: str) -> str:
        if args[:4] == ["-j", "list", "table", "inet"]:
            if self.table is None:
                raise _Failed(1, "Error: No such file or directory")
            return json.dumps(self._nft_json(counters_only=False))
        if args[:3] == ["-j", "list", "counters"]:
            return json.dumps(self._nft_json(counters_only=True)) if self.table else '{"nftables": []}'
        if args[:2] == ["list", "table"]:
            if self.table is None:
                raise _Failed(1, "Error: No such file or directory")
            return "table inet otb_gateway {}\n"
        if args[:2] == ["delete", "table"]:
            if self.table is None:
                raise _Failed(1, "Error: No such file or directory")
            self.table = None
            return ""
        if args == ["-f", "-"]:
            self._nft_script(stdin)
            return ""
        raise _Failed(1, f"fake nft does not know {args}")

    def _nft_json(self, counters_only: bool) -> dict:
        assert self.table is not None
        items: list[dict] = [{"metainfo": {"version": "1.0.6"}}]
        items.append(
            {"counter": {"family": "inet", "name": self.table["signature"], "table": TABLE, "bytes": 0}}
        )
        for name, value in sorted(self.table["counters"].items()):
            items.append(
                {"counter": {"family": "inet", "name": name, "table": TABLE, "packets": 1, "bytes": value}}
            )
        if counters_only:
            return {"nftables": items}
        for name, (rate, burst) in sorted(self.table["limits"].items()):
            items.append(
                {
                    "limit": {
                        "name": name,
                        "table": TABLE,
                        "rate": rate,
                        "per": "second",
                        "rate_unit": "bytes",
                        "inv": True,
                        "burst": burst,
                        "burst_unit": "bytes",
                    }
                }
            )
        for name, elements in sorted(self.table["sets"].items()):
            elem: list = []
            for key, value in sorted(elements.items()):
                shown: object = int(key) if key.isdigit() else key
                if "/" in key:
                    address, length = key.split("/")
                    shown = {"prefix": {"addr": address, "len": int(length)}}
                elem.append([shown, value] if value else shown)
            entry = {"family": "inet", "name": name, "table": TABLE}
            if elem:
                entry["elem"] = elem
            items.append({"map" if name != "box_ports" else "set": entry})
        return {"nftables": items}

    def _nft_script(self, script: str) -> None:
        if script.lstrip().startswith("table inet otb_gateway"):
            signature = re.search(r"counter (otb_schema_\w+)", script)
            sets = re.findall(r"^\s*(?:set|map) (\w+) \{", script, re.M)
            if "delete table" not in script and self.table is not None:
                raise _Failed(1, "Error: Could not process rule: File exists")
            self.table = {
                "signature": signature.group(1) if signature else "",
                "sets": {name: {} for name in sets},
                "counters": {},
                "limits": {},
            }
            return
        if self.table is None:
            raise _Failed(1, "Error: No such file or directory")
        # all or nothing, as nft -f
        table = json.loads(json.dumps(self.table))
        for line in script.splitlines():
            if line.strip():
                self._nft_line(table, line.strip())
        self.table = table

    @staticmethod
    def _nft_line(table: dict, line: str) -> None:
        words = line.split()  # "<add|delete> <element|counter|limit> inet otb_gateway <name> ..."
        verb, kind, name = words[0], words[1], words[4]
        if kind == "counter":
            if verb == "add":
                table["counters"].setdefault(name, 0)
            else:
                if name not in table["counters"]:
                    raise _Failed(1, "Error: Could not process rule: No such file or directory")
                if any(name in s.values() for s in table["sets"].values()):
                    raise _Failed(1, "Error: Could not process rule: Device or resource busy")
                del table["counters"][name]
            return
        if kind == "limit":
            if verb == "add":
                match = re.search(r"rate over (\d+) bytes/second burst (\d+) bytes", line)
                assert match, line
                table["limits"][name] = [int(match.group(1)), int(match.group(2))]
            else:
                if name not in table["limits"]:
                    raise _Failed(1, "Error: Could not process rule: No such file or directory")
                if any(name in s.values() for s in table["sets"].values()):
                    raise _Failed(1, "Error: Could not process rule: Device or resource busy")
                del table["limits"][name]
            return
        assert kind == "element", line
        body = line[line.index("{") + 1 : line.rindex("}")]
        elements = table["sets"][name]
        for part in body.split(","):
            key, _, value = (p.strip() for p in part.partition(" : "))
            value = value.strip('"')
            if verb == "add":
                if key in elements and elements[key] != value:
                    raise _Failed(1, "Error: Could not process rule: File exists")
                if (
                    value
                    and value not in table["counters"]
                    and value not in table["limits"]
                    and not value[0].isdigit()
                ):
                    raise _Failed(1, "Error: Could not process rule: No such file or directory")
                elements[key] = value
            else:
                if key not in elements:
                    raise _Failed(1, "Error: Could not process rule: No such file or directory")
                del elements[key]


class _Failed(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
